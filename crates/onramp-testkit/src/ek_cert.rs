//! A TPM manufacturer for tests: a CA that issues endorsement key
//! certificates shaped as the TCG's EK credential profile shapes them (an
//! empty subject, a critical subjectAltName holding the TPM's manufacturer,
//! model and version as a directoryName, keyUsage keyEncipherment alone,
//! the EK certificate's extended key usage) for a TPM's RSA endorsement key.
//!
//! Everything here panics on failure: it is test setup.

use onramp_core::tpm::RsaPublic;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
    PublicKeyData, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

/// A manufacturer's CA (ECDSA P-256), valid from a day ago for ten years.
pub struct ManufacturerCa {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl ManufacturerCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Onramp test TPMs");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An EK certificate for `ek`, valid from a day ago for ten years (PEM).
    pub fn issue(&self, ek: &RsaPublic) -> String {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(ek, now - Duration::days(1), now + Duration::days(3650))
    }

    /// An EK certificate for `ek` valid from `not_before` to `not_after` (PEM).
    pub fn issue_valid(
        &self,
        ek: &RsaPublic,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> String {
        let mut params = CertificateParams::default();
        // The profile's subject is empty; the TPM is named in the SAN.
        params.distinguished_name = DistinguishedName::new();
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        // tcg-kp-EKCertificate (2.23.133.8.1).
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
        let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], tpm_san());
        san.set_criticality(true);
        params.custom_extensions = vec![san];
        let key = EkPublic(rsa_public_key(ek));
        params
            .signed_by(&key, &self.issuer)
            .expect("an EK certificate")
            .pem()
    }
}

/// The certified key: an RSA public key with the rsaEncryption identifier.
struct EkPublic(Vec<u8>);

impl PublicKeyData for EkPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key(ek: &RsaPublic) -> Vec<u8> {
    let exponent = match ek.exponent() {
        0 => 65537u32,
        e => e,
    };
    let mut body = der_integer(ek.modulus());
    body.extend(der_integer(&exponent.to_be_bytes()));
    der(0x30, &body)
}

/// GeneralNames with one directoryName: TPM manufacturer, model and version
/// (2.23.133.2.1, .2 and .3), each a UTF8String in a set of its own.
fn tpm_san() -> Vec<u8> {
    let attribute = |last: u8, value: &str| {
        let mut pair = der(0x06, &[0x67, 0x81, 0x05, 0x02, last]);
        pair.extend(der(0x0c, value.as_bytes()));
        der(0x31, &der(0x30, &pair))
    };
    let mut rdns = attribute(1, "id:4F4E5250");
    rdns.extend(attribute(2, "swtpm"));
    rdns.extend(attribute(3, "id:00020000"));
    der(0x30, &der(0xa4, &der(0x30, &rdns)))
}

fn der_integer(big_endian: &[u8]) -> Vec<u8> {
    let start = big_endian
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(big_endian.len().saturating_sub(1));
    let mut value = big_endian[start..].to_vec();
    if value.first().is_some_and(|b| b & 0x80 != 0) {
        value.insert(0, 0);
    }
    der(0x02, &value)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}
