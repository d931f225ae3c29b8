//! X.509 certificates: reading the ones operators put into enrollments (PEM
//! or base64 DER), summarising them as Azure's `X509CertificateInfo`, and
//! verifying a device's chain up to an enrolled certificate.

use aws_lc_rs::digest;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::{UtcTime, X509CertificateInfo};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::error::{PEMError, X509Error};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate an operator gave, or a device sent, cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("the PEM text could not be read ({0})")]
    Pem(#[source] x509_parser::nom::Err<PEMError>),
    #[error("the PEM block is a '{label}'; give a CERTIFICATE block")]
    NotCertificatePem { label: String },
    #[error("the certificate is neither PEM text (-----BEGIN CERTIFICATE-----) nor base64 DER")]
    NeitherPemNorBase64,
    #[error("the certificate is not valid X.509 DER ({0})")]
    Der(#[source] x509_parser::nom::Err<X509Error>),
    #[error("the certificate has {bytes} bytes of trailing data after its DER encoding")]
    TrailingData { bytes: usize },
    #[error("the certificate's validity dates are out of range")]
    ValidityOutOfRange,
}

/// A certificate's DER bytes, decoded from PEM or base64.
pub fn decode(text: &str) -> Result<Vec<u8>, CertificateError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(CertificateError::Pem)?;
        if pem.label != "CERTIFICATE" {
            return Err(CertificateError::NotCertificatePem { label: pem.label });
        }
        return Ok(pem.contents);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(compact)
        .map_err(|_| CertificateError::NeitherPemNorBase64)
}

/// Parses a certificate and computes the info Azure returns for it.
pub fn info(text: &str) -> Result<X509CertificateInfo, CertificateError> {
    let der = decode(text)?;
    info_from_der(&der)
}

pub fn info_from_der(der: &[u8]) -> Result<X509CertificateInfo, CertificateError> {
    Ok(Parsed::from_der(der)?.info)
}

/// A certificate read once, with what attestation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub der: Vec<u8>,
    pub info: X509CertificateInfo,
    pub common_name: Option<String>,
    pub is_ca: bool,
}

impl Parsed {
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(CertificateError::Der)?;
        if !rest.is_empty() {
            return Err(CertificateError::TrailingData { bytes: rest.len() });
        }
        let time = |t: x509_parser::time::ASN1Time| {
            UtcTime::from_unix_nanos(i128::from(t.timestamp()) * 1_000_000_000)
                .ok_or(CertificateError::ValidityOutOfRange)
        };
        let info = X509CertificateInfo {
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
        };
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        Ok(Self {
            der: der.to_vec(),
            info,
            common_name,
            is_ca,
        })
    }

    /// Whether `now` lies within the validity period.
    pub fn validity_at(&self, now: UtcTime) -> Result<(), ChainError> {
        if now < self.info.not_before_utc {
            return Err(ChainError::NotYetValid(format!(
                "certificate {} is not valid before {}",
                self.info.subject_name, self.info.not_before_utc
            )));
        }
        if now > self.info.not_after_utc {
            return Err(ChainError::Expired(format!(
                "certificate {} expired at {}",
                self.info.subject_name, self.info.not_after_utc
            )));
        }
        Ok(())
    }

    /// Whether this certificate has the thumbprint `hex` (SHA-1 or SHA-256, any case).
    pub fn has_thumbprint(&self, hex: &str) -> bool {
        let hex = hex.trim();
        hex.eq_ignore_ascii_case(&self.info.sha256_thumbprint)
            || hex.eq_ignore_ascii_case(&self.info.sha1_thumbprint)
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// No path from the leaf to the anchor (a missing intermediate, another CA).
    UnknownIssuer(String),
    Expired(String),
    NotYetValid(String),
    /// A malformed certificate, a CA used as a device certificate, a broken
    /// constraint or signature.
    Invalid(String),
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::UnknownIssuer(m)
            | ChainError::Expired(m)
            | ChainError::NotYetValid(m)
            | ChainError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Verifies that `leaf` chains to `anchor` through (some of) `intermediates`
/// at time `now`: signatures, validity periods, basic constraints, key usage
/// (client authentication) and path length. Returns how many intermediates
/// the path used: 0 when the anchor issued the leaf.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: UtcTime,
) -> Result<usize, ChainError> {
    let anchor_der = CertificateDer::from(anchor);
    let anchor = webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| {
        ChainError::Invalid(format!(
            "the enrolled certificate cannot be a trust anchor ({e})"
        ))
    })?;
    let leaf_der = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| ChainError::Invalid(format!("the device certificate cannot be read ({e})")))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let seconds = u64::try_from(now.unix_seconds()).unwrap_or_default();
    let anchors = [anchor];
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(chain_error)?;
    Ok(path.intermediate_certificates().count())
}

fn chain_error(e: webpki::Error) -> ChainError {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => ChainError::UnknownIssuer(
            "no path from the device certificate to the enrolled certificate (unknown issuer)"
                .into(),
        ),
        E::CertExpired { .. } => {
            ChainError::Expired("a certificate of the chain has expired".into())
        }
        E::CertNotValidYet { .. } => {
            ChainError::NotYetValid("a certificate of the chain is not valid yet".into())
        }
        E::CaUsedAsEndEntity => {
            ChainError::Invalid("the device certificate is a CA certificate".into())
        }
        E::EndEntityUsedAsCa => {
            ChainError::Invalid("a certificate in the chain is not a CA but issued another".into())
        }
        E::PathLenConstraintViolated => {
            ChainError::Invalid("the chain is longer than a pathLenConstraint allows".into())
        }
        E::RequiredEkuNotFoundContext(_) => ChainError::Invalid(
            "the device certificate's extended key usage does not allow client authentication"
                .into(),
        ),
        other => ChainError::Invalid(format!("the chain is not valid ({other})")),
    }
}

/// Upper-case hex digest of the DER bytes.
pub fn thumbprint(algorithm: &'static digest::Algorithm, der: &[u8]) -> String {
    digest::digest(algorithm, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Whether `candidate` carries a signature made with `issuer`'s key.
pub fn is_signed_by(candidate: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (
        X509Certificate::from_der(candidate),
        X509Certificate::from_der(issuer),
    ) else {
        return false;
    };
    c.verify_signature(Some(i.public_key())).is_ok()
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
        assert!(
            info("hello")
                .unwrap_err()
                .to_string()
                .contains("neither PEM")
        );
        assert!(
            info("aGVsbG8=")
                .unwrap_err()
                .to_string()
                .contains("not valid X.509")
        );
        assert!(info("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = info_from_der(&bytes);
            let _ = verify_chain(&bytes, std::slice::from_ref(&bytes), &bytes, UtcTime::now());
            let _ = is_signed_by(&bytes, &bytes);
        }
    }
}
