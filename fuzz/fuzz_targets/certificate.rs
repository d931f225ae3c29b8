//! Certificates from devices and operators: DER from TLS handshakes, PEM or
//! base64 text from enrollments. Reading and chain verification must never
//! panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_core::tpm::ek_cert::EkCertificate;
use onramp_core::x509;
use onramp_model::UtcTime;

fuzz_target!(|data: &[u8]| {
    let now = UtcTime::now();
    // The input as a device's chain: leaf, intermediates, and as its own anchor.
    let half = data.len() / 2;
    let (a, b) = data.split_at(half);
    let _ = x509::Parsed::from_der(data);
    let _ = x509::verify_chain(data, &[a.to_vec(), b.to_vec()], data, now);
    let _ = x509::verify_chain(a, &[b.to_vec()], b, now);
    let _ = x509::is_signed_by(a, b);
    // The input as a TPM's EK certificate, checked against a manufacturer CA.
    if let Ok(ek) = EkCertificate::from_der(a.to_vec()) {
        let _ = ek.issued_by(b);
        let _ = ek.validity_at(b, now.unix_seconds());
    }
    // The input as text an operator pasted into an enrollment.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = x509::info(text);
        let _ = x509::decode(text);
        let _ = EkCertificate::parse(text);
    }
});
