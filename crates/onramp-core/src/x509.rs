//! Reading X.509 certificates that operators put into enrollments: PEM text or
//! bare base64 DER, summarised as Azure's `X509CertificateInfo`.

use aws_lc_rs::digest;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::{UtcTime, X509CertificateInfo};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate's DER bytes, decoded from PEM or base64.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|e| format!("the PEM text could not be read ({e})"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!(
                "the PEM block is a '{}'; give a CERTIFICATE block",
                pem.label
            ));
        }
        return Ok(pem.contents);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| {
        "the certificate is neither PEM text (-----BEGIN CERTIFICATE-----) nor base64 DER"
            .to_owned()
    })
}

/// Parses a certificate and computes the info Azure returns for it.
pub fn info(text: &str) -> Result<X509CertificateInfo, String> {
    let der = decode(text)?;
    info_from_der(&der)
}

pub fn info_from_der(der: &[u8]) -> Result<X509CertificateInfo, String> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the certificate is not valid X.509 DER ({e})"))?;
    if !rest.is_empty() {
        return Err(format!(
            "the certificate has {} bytes of trailing data after its DER encoding",
            rest.len()
        ));
    }
    let time = |t: x509_parser::time::ASN1Time| {
        UtcTime::from_unix_nanos(i128::from(t.timestamp()) * 1_000_000_000)
            .ok_or_else(|| "the certificate's validity dates are out of range".to_owned())
    };
    Ok(X509CertificateInfo {
        subject_name: dotnet_name(cert.subject()),
        sha1_thumbprint: thumbprint(&digest::SHA1_FOR_LEGACY_USE_ONLY, der),
        sha256_thumbprint: thumbprint(&digest::SHA256, der),
        issuer_name: dotnet_name(cert.issuer()),
        not_before_utc: time(cert.validity().not_before)?,
        not_after_utc: time(cert.validity().not_after)?,
        serial_number: cert
            .raw_serial_as_string()
            .replace(':', "")
            .to_ascii_uppercase(),
        version: cert.version().0 as i32 + 1,
    })
}

/// Upper-case hex digest of the DER bytes.
pub fn thumbprint(algorithm: &'static digest::Algorithm, der: &[u8]) -> String {
    digest::digest(algorithm, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// A distinguished name the way .NET prints it: most specific first
/// (`CN=device, O=Contoso, C=US`).
fn dotnet_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let text = name.to_string();
    let mut parts: Vec<&str> = text.split(", ").collect();
    parts.reverse();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(info("hello").unwrap_err().contains("neither PEM"));
        assert!(info("aGVsbG8=").unwrap_err().contains("not valid X.509"));
        assert!(info("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = info_from_der(&bytes);
        }
    }
}
