//! Endorsement key certificates: the certificate a TPM's manufacturer issued
//! for its endorsement key, checked against the manufacturer CA certificates
//! of a TPM enrollment group (Onramp's extension: Azure has no TPM groups).
//!
//! An EK certificate is not a TLS certificate, and rustls-webpki (which
//! checks device chains for X.509 attestation) is built for TLS: the TCG's
//! EK credential profile gives the certificate an empty subject with a
//! critical subjectAltName holding only a directoryName of TPM attributes
//! (manufacturer, model, version), a keyUsage of keyEncipherment alone, an
//! extended key usage of its own (2.23.133.8.1) and an RSA key meant for
//! OAEP — webpki refuses several of these by design. So the check is made
//! here with x509-parser, which reads them all: the issuer's signature
//! (x509-parser's verification, the one `x509::is_signed_by` uses), the
//! validity dates of the certificate and of its issuer, and that the key
//! the certificate holds is the endorsement key the device presents.

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::time::ASN1Time;

use super::RsaPublic;
use crate::x509;

/// Why an endorsement key certificate was refused. Messages name no field:
/// the caller prefixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkCertError {
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("holds no RSA key; a TPM's RSA-2048 endorsement key certificate is required")]
    NotRsa,
    #[error(
        "certifies another key than the endorsement key sent; send this TPM's own EK \
         certificate (tpm2_nvread 0x01c00002 reads it from the TPM)"
    )]
    KeyMismatch,
    #[error("{0}")]
    Expired(String),
}

/// An endorsement key certificate, read once.
#[derive(Debug, Clone)]
pub struct EkCertificate {
    der: Vec<u8>,
    issuer: String,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl EkCertificate {
    /// Reads a certificate given as PEM text or base64 DER.
    pub fn parse(text: &str) -> Result<Self, EkCertError> {
        let der = x509::decode(text).map_err(|e| EkCertError::Unreadable(e.to_string()))?;
        Self::from_der(der)
    }

    /// Reads a certificate's DER bytes.
    pub fn from_der(der: Vec<u8>) -> Result<Self, EkCertError> {
        let cert = read(&der)?;
        let Ok(PublicKey::RSA(key)) = cert.public_key().parsed() else {
            return Err(EkCertError::NotRsa);
        };
        let (modulus, exponent) = (
            unsigned(key.modulus).to_vec(),
            unsigned(key.exponent).to_vec(),
        );
        let (not_before, not_after) = validity(&cert);
        let issuer = cert.issuer().to_string();
        Ok(Self {
            der,
            issuer,
            modulus,
            exponent,
            not_before,
            not_after,
        })
    }

    /// The issuer's name, for messages.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether the certified key is `ek`: the same modulus and exponent (a
    /// `TPM2B_PUBLIC` writes 65537 as 0).
    pub fn certifies(&self, ek: &RsaPublic) -> bool {
        let exponent = match ek.exponent() {
            0 => 65537,
            e => e,
        };
        let exponent_bytes = exponent.to_be_bytes();
        unsigned(ek.modulus()) == self.modulus.as_slice()
            && unsigned(&exponent_bytes) == self.exponent.as_slice()
    }

    /// Checks the certified key against `ek`.
    pub fn check_key(&self, ek: &RsaPublic) -> Result<(), EkCertError> {
        if self.certifies(ek) {
            Ok(())
        } else {
            Err(EkCertError::KeyMismatch)
        }
    }

    /// Whether `ca_der` issued this certificate: its subject is the
    /// issuer's name and its key made the signature.
    pub fn issued_by(&self, ca_der: &[u8]) -> bool {
        let (Ok(cert), Ok(ca)) = (read(&self.der), read(ca_der)) else {
            return false;
        };
        cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Whether this certificate and the CA that issued it are valid at
    /// `now` (Unix seconds).
    pub fn validity_at(&self, ca_der: &[u8], now: i64) -> Result<(), EkCertError> {
        let within = |(from, to): (i64, i64)| from <= now && now <= to;
        if !within((self.not_before, self.not_after)) {
            return Err(EkCertError::Expired(format!(
                "the endorsement key certificate is valid from {} to {} (Unix seconds), \
                 not now ({now}); the TPM needs a current certificate from its manufacturer",
                self.not_before, self.not_after
            )));
        }
        let ca = read(ca_der)?;
        if !within(validity(&ca)) {
            return Err(EkCertError::Expired(format!(
                "the manufacturer certificate {} that issued the endorsement key certificate \
                 is not valid now; replace it in the group with a current one",
                ca.subject()
            )));
        }
        Ok(())
    }
}

fn read(der: &[u8]) -> Result<X509Certificate<'_>, EkCertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(EkCertError::Unreadable(format!(
            "{} bytes follow the certificate's DER encoding",
            rest.len()
        ))),
        Err(e) => Err(EkCertError::Unreadable(format!("not X.509 DER ({e})"))),
    }
}

/// The validity period in Unix seconds.
fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (
        ASN1Time::timestamp(&v.not_before),
        ASN1Time::timestamp(&v.not_after),
    )
}

/// A big-endian integer without its leading zero bytes.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Reads a manufacturer CA certificate of a TPM enrollment group (PEM or
/// base64 DER), as validation does and attestation again.
pub fn manufacturer_der(text: &str) -> Result<Vec<u8>, EkCertError> {
    let der = x509::decode(text).map_err(|e| EkCertError::Unreadable(e.to_string()))?;
    read(&der)?;
    Ok(der)
}
