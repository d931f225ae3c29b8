//! TLS configurations. Devices may present a client certificate on any
//! endpoint; TLS only checks that they hold its key, and the attestation layer
//! decides later whether the enrollment list trusts it (the enrollment, not
//! the TLS stack, knows which certificates count).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::ResolvesServerCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Parses every CERTIFICATE block of a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(
            "the PEM text holds no CERTIFICATE block".into(),
        ));
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("private key PEM: {e}")))
}

/// Accepts any client certificate chain (or none) at the handshake, but keeps
/// rustls's check of the handshake signature: the peer proves it holds the
/// leaf's private key.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// An empty hint list, so clients never filter their certificate out.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// ALPN protocols of a listener that serves HTTP and MQTT, in the server's
/// order of preference: HTTP clients get HTTP/2 or HTTP/1.1, and MQTT
/// clients that offer only `mqtt` (as some do on 8883) get that.
pub const ALPN_HTTP_AND_MQTT: &[&[u8]] = &[b"h2", b"http/1.1", b"mqtt"];

/// A server configuration from a PEM chain (leaf first) and key, offering
/// TLS 1.2 and 1.3, optional client certificates, and the given ALPN protocols.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(ServerCert::from_pem(chain_pem, key_pem)?, alpn)
}

/// As [`server_config`], presenting whatever certificate `cert` holds at
/// each handshake (so it can be replaced while the server runs).
pub fn server_config_with(
    cert: Arc<ServerCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The server's certificate and key, replaceable while it serves: a new
/// handshake gets the certificate of the moment, and connections already
/// established keep the session they made.
#[derive(Debug)]
pub struct ServerCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(std::sync::RwLock::new(certified(
            chain_pem, key_pem,
        )?))))
    }

    /// Presents `chain_pem` and `key_pem` from the next handshake on; a
    /// chain or key that does not parse, or do not match, changes nothing.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let fresh = certified(chain_pem, key_pem)?;
        match self.0.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let certified = CertifiedKey::from_der(
        certs_from_pem(chain_pem)?,
        key_from_pem(key_pem)?,
        &provider(),
    )?;
    Ok(Arc::new(certified))
}

/// A client configuration trusting the machine's roots plus `extra_roots_pem`
/// (e.g. Onramp's development CA).
pub fn client_config(extra_roots_pem: Option<&str>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_roots_pem {
        for cert in certs_from_pem(pem)? {
            roots.add(cert)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

    use std::sync::Mutex;

    use rustls::client::ResolvesClientCert;
    use rustls::sign::CertifiedKey;

    use super::*;
    use crate::pki::dev_certs::{Issued, Validity};

    /// Presents a device certificate and remembers the CA hints it was given.
    #[derive(Debug)]
    struct Device {
        key: Arc<CertifiedKey>,
        hints: Mutex<Option<usize>>,
    }

    impl ResolvesClientCert for Device {
        fn resolve(
            &self,
            root_hint_subjects: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<CertifiedKey>> {
            *self.hints.lock().unwrap() = Some(root_hint_subjects.len());
            Some(self.key.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    /// What older device stacks do: TLS 1.2 only, with a client certificate
    /// that no CA hint may filter out. The handshake completes and the server
    /// sees the certificate.
    #[test]
    fn tls12_devices_present_their_certificate_without_ca_hints() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            crate::pki::load_or_create(dir.path(), &crate::pki::default_host_names()).unwrap();
        let server = Arc::new(
            server_config(&pki.server_chain_pem, &pki.server_key_pem, &[b"http/1.1"]).unwrap(),
        );
        let root = Issued::root("Device Root", Validity::days(30)).unwrap();
        let device = root.device("device-12", Validity::days(30)).unwrap();

        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(key_from_pem(&device.key_pem).unwrap())
            .unwrap();
        let resolver = Arc::new(Device {
            key: Arc::new(CertifiedKey::new(
                certs_from_pem(&device.cert_pem).unwrap(),
                key,
            )),
            hints: Mutex::new(None),
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certs_from_pem(&pki.ca_pem).unwrap().remove(0))
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(resolver.clone());

        let mut c = rustls::ClientConnection::new(
            Arc::new(client),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(*resolver.hints.lock().unwrap(), Some(0), "no CA hints");
        let presented = s.peer_certificates().unwrap();
        assert_eq!(presented[0].as_ref(), device.cert_der.as_slice());
    }
}
