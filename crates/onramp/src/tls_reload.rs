//! The server certificate while `onramp serve` runs: the operator's
//! certificate and key are read again on SIGHUP, and the development
//! certificate is checked every [`RENEWAL_CHECK`] (and on SIGHUP) and
//! re-issued when it comes within 30 days of its expiry. Either way only
//! new handshakes see the new certificate; established connections go on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use onramp_net::tls::ServerCert;

/// How often the development certificate's expiry is looked at.
const RENEWAL_CHECK: Duration = Duration::from_secs(6 * 3600);

/// Where the server's certificate comes from.
pub enum CertSource {
    /// `[tls] cert` and `key`: files the operator replaces, then signals.
    Operator { cert: PathBuf, key: PathBuf },
    /// The development PKI in `<data>/tls`, for these host names.
    Development { dir: PathBuf, names: Vec<String> },
}

impl CertSource {
    /// The chain and key as they are now (the development certificate
    /// re-issued first if it is about to expire).
    pub fn read(&self) -> anyhow::Result<(String, String)> {
        match self {
            Self::Operator { cert, key } => Ok((
                std::fs::read_to_string(cert)
                    .with_context(|| format!("reading {}", cert.display()))?,
                std::fs::read_to_string(key)
                    .with_context(|| format!("reading {}", key.display()))?,
            )),
            Self::Development { dir, names } => {
                let pki = onramp_net::pki::load_or_create(dir, names)
                    .context("development certificates")?;
                Ok((pki.server_chain_pem, pki.server_key_pem))
            }
        }
    }

    fn reload(&self, cert: &ServerCert, why: &str) {
        let result = self
            .read()
            .and_then(|(chain, key)| Ok(cert.replace(&chain, &key)?));
        match result {
            Ok(()) => tracing::info!("server certificate loaded again ({why})"),
            Err(e) => tracing::error!(
                "server certificate not reloaded ({why}): {e:#}; the current one stays in use"
            ),
        }
    }
}

/// Keeps `cert` current until the process ends. SIGHUP is taken over
/// before this returns (its default would end the process).
pub fn spawn(cert: Arc<ServerCert>, source: CertSource) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(RENEWAL_CHECK);
        timer.tick().await;
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = hup => source.reload(&cert, "SIGHUP"),
                _ = timer.tick() => {
                    if matches!(source, CertSource::Development { .. }) {
                        source.reload(&cert, "renewal check");
                    }
                }
            }
        }
    });
}
