//! The development PKI: a local CA and a server certificate for the names
//! Onramp answers to, created on first start under `<data>/tls` and reused
//! after. Devices and SDKs trust `ca.pem`; nothing here is for production
//! (bring your own certificate with `tls.cert` / `tls.key`).
//!
//! Each development CA has a name of its own (a suffix from its key) and
//! every certificate names its issuer's key (authority key identifier): a
//! client that trusts two of them at once, say a service's and a separate
//! companion hub's, finds the right one. OpenSSL, which picks an issuer by
//! name, failed with "certificate signature failure" when all were called
//! alike. A CA created before keeps its name, so devices that trust it still do.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Paths and contents of the development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert_path: PathBuf,
    pub ca_pem: String,
    /// Server certificate followed by the CA certificate.
    pub server_chain_pem: String,
    pub server_key_pem: String,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Loads the PKI from `dir`, creating the CA and server certificate if
/// missing, and re-issuing the server certificate if it does not cover
/// every name in `host_names` (or expires within 30 days).
pub fn load_or_create(dir: &Path, host_names: &[String]) -> io::Result<DevPki> {
    onramp_files::own_dir(dir)?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let server_cert_path = dir.join("server.pem");
    let server_key_path = dir.join("server.key");
    for path in [
        &ca_cert_path,
        &ca_key_path,
        &server_cert_path,
        &server_key_path,
    ] {
        onramp_files::restrict(path)?;
    }

    if !ca_cert_path.exists() || !ca_key_path.exists() {
        let key = KeyPair::generate().map_err(other)?;
        let mut params = CertificateParams::default();
        let suffix: String = params.key_identifier(&key)[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("Onramp Development CA {suffix}"),
        );
        dn.push(DnType::OrganizationName, "Onramp (development only)");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        // A CA certificate carries its subject key identifier (rcgen writes it for CAs).
        let cert = params.self_signed(&key).map_err(other)?;
        onramp_files::write(&ca_key_path, key.serialize_pem().as_bytes())?;
        onramp_files::write(&ca_cert_path, cert.pem().as_bytes())?;
        let _ = fs::remove_file(&server_cert_path);
    }
    let ca_pem = fs::read_to_string(&ca_cert_path)?;

    let wanted: Vec<String> = host_names
        .iter()
        .map(|h| onramp_model::authority::host(h).to_ascii_lowercase())
        .collect();
    let current = fs::read_to_string(&server_cert_path).ok();
    let fresh = current
        .as_deref()
        .is_some_and(|pem| covers(pem, &wanted) && names_its_issuer(pem))
        && server_key_path.exists();
    if !fresh {
        let ca_key = KeyPair::from_pem(&fs::read_to_string(&ca_key_path)?).map_err(other)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(other)?;
        let key = KeyPair::generate().map_err(other)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            wanted
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = wanted
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(other)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Subject and authority key identifiers (an explicit end entity gets both).
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(825);
        let cert = params.signed_by(&key, &issuer).map_err(other)?;
        onramp_files::write(&server_key_path, key.serialize_pem().as_bytes())?;
        onramp_files::write(
            &server_cert_path,
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
        )?;
    }
    Ok(DevPki {
        ca_cert_path,
        ca_pem,
        server_chain_pem: fs::read_to_string(&server_cert_path)?,
        server_key_pem: fs::read_to_string(&server_key_path)?,
    })
}

/// The names Onramp's development certificate always covers.
pub fn default_host_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Whether the certificate in `pem` names every host in `wanted` and is not
/// about to expire.
fn covers(pem: &str, wanted: &[String]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let expires = cert.validity().not_after.timestamp();
    if expires < (OffsetDateTime::now_utc() + Duration::days(30)).unix_timestamp() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    wanted.iter().all(|w| names.iter().any(|n| n == w))
}

/// Whether the first certificate in `pem` names its issuer's key: a server
/// certificate issued before that was done is issued again (by the same CA).
fn names_its_issuer(pem: &str) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    cert.iter_extensions().any(|e| {
        matches!(
            e.parsed_extension(),
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a)
                if a.key_identifier.is_some()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_reused_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = default_host_names();
        let a = load_or_create(dir.path(), &names).unwrap();
        let b = load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.server_chain_pem, b.server_chain_pem, "reused");
        let mut more = names.clone();
        more.push("dps.example.net:8443".into());
        let c = load_or_create(dir.path(), &more).unwrap();
        assert_ne!(
            a.server_chain_pem, c.server_chain_pem,
            "reissued for a new name"
        );
        assert_eq!(a.ca_pem, c.ca_pem, "the CA stays");
        assert!(covers(
            &c.server_chain_pem,
            &["dps.example.net".into(), "127.0.0.1".into()]
        ));
        crate::tls::server_config(&c.server_chain_pem, &c.server_key_pem, &[b"http/1.1"]).unwrap();
    }

    /// The subject name, subject key identifier and authority key
    /// identifier of the first certificate in `pem`.
    fn names(pem: &str) -> (String, Option<Vec<u8>>, Option<Vec<u8>>) {
        use x509_parser::extensions::ParsedExtension;
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (mut ski, mut aki) = (None, None);
        for e in cert.iter_extensions() {
            match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => {}
            }
        }
        (cert.subject().to_string(), ski, aki)
    }

    #[test]
    fn each_ca_has_its_own_name_and_certificates_name_their_issuer_key() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = load_or_create(one.path(), &default_host_names()).unwrap();
        let b = load_or_create(two.path(), &default_host_names()).unwrap();
        let (a_name, a_ski, _) = names(&a.ca_pem);
        let (b_name, _, _) = names(&b.ca_pem);
        assert!(a_name.contains("Onramp Development CA "), "{a_name}");
        assert_ne!(a_name, b_name);
        let (_, server_ski, server_aki) = names(&a.server_chain_pem);
        assert!(a_ski.is_some() && server_ski.is_some());
        assert_eq!(
            server_aki, a_ski,
            "the server certificate names its CA's key"
        );
    }

    #[test]
    fn an_existing_ca_is_kept_and_its_server_certificate_gains_the_identifier() {
        let dir = tempfile::tempdir().unwrap();
        // A CA and server certificate as earlier versions made them: the
        // shared name, no authority key identifier.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Onramp Development CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let issuer = Issuer::new(params, key);
        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".into()]).unwrap();
        server.subject_alt_names = default_host_names()
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().unwrap()),
            })
            .collect();
        let old_server = server.signed_by(&server_key, &issuer).unwrap();
        fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        fs::write(dir.path().join("ca.key"), issuer.key().serialize_pem()).unwrap();
        fs::write(dir.path().join("server.pem"), old_server.pem()).unwrap();
        fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();

        let pki = load_or_create(dir.path(), &default_host_names()).unwrap();
        assert_eq!(pki.ca_pem, ca.pem(), "the CA devices trust is kept");
        let (_, ca_ski, _) = names(&pki.ca_pem);
        let (_, _, server_aki) = names(&pki.server_chain_pem);
        assert_eq!(
            server_aki, ca_ski,
            "reissued by the same CA, naming its key"
        );
        #[cfg(unix)]
        for name in ["", "ca.pem", "ca.key", "server.pem", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
        }
    }

    #[test]
    fn dev_certs_name_issuer_keys() {
        use dev_certs::{Issued, Validity};
        let root = Issued::root("Test Root", Validity::days(1)).unwrap();
        let ica = root
            .intermediate("Test Intermediate", Validity::days(1))
            .unwrap();
        let device = ica.device("sensor-1", Validity::days(1)).unwrap();
        let (_, root_ski, _) = names(&root.cert_pem);
        let (_, ica_ski, ica_aki) = names(&ica.cert_pem);
        let (_, device_ski, device_aki) = names(&device.cert_pem);
        assert!(root_ski.is_some() && device_ski.is_some());
        assert_eq!(ica_aki, root_ski);
        assert_eq!(device_aki, ica_ski);
        let reloaded = Issued::from_pem(&ica.cert_pem, &ica.key_pem).unwrap();
        let (_, _, again) = names(
            &reloaded
                .device("sensor-2", Validity::days(1))
                .unwrap()
                .cert_pem,
        );
        assert_eq!(
            again, ica_ski,
            "a CA reloaded from its files names the same key"
        );
    }
}

/// Development certificates for trying X.509 attestation: the root and
/// intermediate CAs and the device certificates (ECDSA P-256) that
/// `onramp cert create-root`, `create-intermediate` and `create-device`
/// write, and that tests issue. Apart from the server's development PKI
/// above; not for production devices.
pub mod dev_certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use time::{Duration, OffsetDateTime};

    /// A certificate and its private key.
    pub struct Issued {
        pub cert_pem: String,
        pub cert_der: Vec<u8>,
        pub key_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// Validity of a certificate relative to now.
    #[derive(Debug, Clone, Copy)]
    pub struct Validity {
        pub not_before: OffsetDateTime,
        pub not_after: OffsetDateTime,
    }

    impl Validity {
        /// From a day ago to `days` from now.
        pub fn days(days: i64) -> Self {
            let now = OffsetDateTime::now_utc();
            Self {
                not_before: now - Duration::days(1),
                not_after: now + Duration::days(days),
            }
        }
    }

    /// Every certificate carries its subject key identifier (CAs always,
    /// end entities as explicit non-CAs) and, when issued by a CA, its
    /// issuer's: clients that trust several roots of one name find the right one.
    fn params(cn: &str, validity: Validity) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params
    }

    fn ca_params(cn: &str, validity: Validity, path_len: Option<u8>) -> CertificateParams {
        let mut p = params(cn, validity);
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    }

    impl Issued {
        /// A self-signed root CA.
        pub fn root(cn: &str, validity: Validity) -> Result<Self, rcgen::Error> {
            let key = KeyPair::generate()?;
            let params = ca_params(cn, validity, None);
            let cert = params.self_signed(&key)?;
            Ok(Self::new(cert, params, key))
        }

        /// A self-signed device certificate (for individual enrollments).
        pub fn self_signed_device(cn: &str, validity: Validity) -> Result<Self, rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut params = params(cn, validity);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.self_signed(&key)?;
            Ok(Self::new(cert, params, key))
        }

        /// An intermediate CA signed by this one.
        pub fn intermediate(&self, cn: &str, validity: Validity) -> Result<Self, rcgen::Error> {
            let key = KeyPair::generate()?;
            let params = ca_params(cn, validity, None);
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok(Self::new(cert, params, key))
        }

        /// A device (end-entity, client authentication) certificate signed by this CA.
        pub fn device(&self, cn: &str, validity: Validity) -> Result<Self, rcgen::Error> {
            let key = KeyPair::generate()?;
            let mut params = params(cn, validity);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok(Self::new(cert, params, key))
        }

        /// Reloads a CA from its PEM files, to issue more certificates.
        pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
            let key = KeyPair::from_pem(key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
            let der = crate::tls::certs_from_pem(cert_pem)
                .ok()
                .and_then(|c| c.first().map(|c| c.as_ref().to_vec()))
                .ok_or(rcgen::Error::CouldNotParseCertificate)?;
            Ok(Self {
                cert_pem: cert_pem.to_owned(),
                cert_der: der,
                key_pem: key_pem.to_owned(),
                issuer,
            })
        }

        fn new(cert: rcgen::Certificate, params: CertificateParams, key: KeyPair) -> Self {
            Self {
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                key_pem: key.serialize_pem(),
                issuer: Issuer::new(params, key),
            }
        }
    }
}
