//! How a device proves itself to the companion hub, whatever protocol it
//! speaks: a SAS token for `{hub}/devices/{deviceId}` signed with one of the
//! device's keys (the MQTT password, the AMQP CBS put-token), or the TLS
//! client certificate of an X.509 device (a registered thumbprint, or a CN
//! equal to the device ID chained to a CA the hub trusts).

use onramp_core::{sas, x509};
use onramp_model::UtcTime;
use onramp_model::authority::same_host;
use onramp_model::hub::{AuthenticationType, DeviceStatus};
use rustls::pki_types::CertificateDer;

use super::CompanionHub;
use super::store::DeviceRecord;

/// What the device presented.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proof<'a> {
    /// A SAS token, if the device sent one.
    pub token: Option<&'a str>,
    /// The TLS client certificate chain, leaf first; empty if none.
    pub chain: &'a [CertificateDer<'static>],
}

/// Why a device was not let in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Denied {
    /// The credential, the device or its state (the message says which).
    NotAuthorized(String),
    /// The hub's store could not answer.
    Unavailable(String),
}

/// A device the hub let in, and until when its token is good (`None` for a
/// certificate).
#[derive(Debug)]
pub(crate) struct Admitted {
    pub record: DeviceRecord,
    pub token_expiry: Option<i64>,
}

/// The device ID a SAS token is for: `{hub}/devices/{deviceId}` (decoded),
/// when the host is this hub's.
pub(crate) fn token_device(token: &str, host_name: &str) -> Result<String, Denied> {
    let token = sas::parse(token).map_err(|e| Denied::NotAuthorized(e.to_string()))?;
    let (host, path) = token
        .resource
        .split_once('/')
        .unwrap_or((&token.resource, ""));
    let device = path
        .trim_end_matches('/')
        .split_once('/')
        .filter(|(devices, id)| {
            devices.eq_ignore_ascii_case("devices") && !id.is_empty() && !id.contains('/')
        })
        .map(|(_, id)| id.to_owned());
    match device {
        Some(id) if same_host(host, host_name) => Ok(id),
        _ => Err(Denied::NotAuthorized(format!(
            "the token is for '{}', not for {host_name}/devices/{{deviceId}}",
            token.resource
        ))),
    }
}

/// Checks `proof` for `device_id` the way IoT Hub does.
pub(crate) async fn authenticate(
    hub: &CompanionHub,
    device_id: &str,
    proof: Proof<'_>,
) -> Result<Admitted, Denied> {
    let record = hub
        .store()
        .device(device_id)
        .await
        .map_err(|e| Denied::Unavailable(e.to_string()))?
        .ok_or_else(|| Denied::NotAuthorized(format!("no device '{device_id}' in this hub")))?;
    if record.device.status == Some(DeviceStatus::Disabled) {
        return Err(Denied::NotAuthorized(format!(
            "device '{device_id}' is disabled"
        )));
    }
    let auth = record.device.authentication.clone().unwrap_or_default();
    let refuse = |m: String| Err(Denied::NotAuthorized(m));
    let token_expiry = match auth.kind {
        AuthenticationType::Sas => {
            let Some(token) = proof.token else {
                return refuse("no SAS token was presented".into());
            };
            let token = sas::parse(token).map_err(|e| Denied::NotAuthorized(e.to_string()))?;
            let (resource_host, resource_path) = token
                .resource
                .split_once('/')
                .unwrap_or((&token.resource, ""));
            if !same_host(resource_host, hub.host_name())
                || !resource_path
                    .trim_end_matches('/')
                    .eq_ignore_ascii_case(&format!("devices/{device_id}"))
            {
                return refuse(format!(
                    "the token is for '{}', not for {}/devices/{device_id}",
                    token.resource,
                    hub.host_name()
                ));
            }
            token
                .check_expiry(UtcTime::now().unix_seconds(), 300)
                .map_err(|e| Denied::NotAuthorized(e.to_string()))?;
            let keys = auth.symmetric_key.unwrap_or_default();
            let signed = [keys.primary_key, keys.secondary_key]
                .iter()
                .flatten()
                .any(|k| token.is_signed_by(k.expose()));
            if !signed {
                return refuse(format!(
                    "the token is not signed with a key of device '{device_id}'"
                ));
            }
            Some(token.expiry)
        }
        AuthenticationType::SelfSigned | AuthenticationType::CertificateAuthority => {
            let chain = proof.chain;
            let Some(leaf) = chain.first() else {
                return refuse(format!(
                    "device '{device_id}' authenticates with an X.509 certificate; present it in the TLS handshake"
                ));
            };
            let leaf = x509::Parsed::from_der(leaf.as_ref())
                .map_err(|e| Denied::NotAuthorized(format!("the device certificate: {e}")))?;
            let now = UtcTime::now();
            leaf.validity_at(now)
                .map_err(|e| Denied::NotAuthorized(e.to_string()))?;
            if auth.kind == AuthenticationType::SelfSigned {
                let prints = auth.x509_thumbprint.unwrap_or_default();
                let known = [prints.primary_thumbprint, prints.secondary_thumbprint]
                    .into_iter()
                    .flatten()
                    .any(|t| leaf.has_thumbprint(&t));
                if !known {
                    return refuse(format!(
                        "the certificate (SHA-256 {}) is not one of device '{device_id}'",
                        leaf.info.sha256_thumbprint
                    ));
                }
            } else {
                if !leaf
                    .common_name
                    .as_deref()
                    .is_some_and(|cn| cn.eq_ignore_ascii_case(device_id))
                {
                    return refuse(format!(
                        "the certificate's CN is not the device ID '{device_id}'"
                    ));
                }
                let intermediates: Vec<Vec<u8>> =
                    chain[1..].iter().map(|c| c.as_ref().to_vec()).collect();
                let trusted = hub
                    .trusted_cas()
                    .iter()
                    .any(|ca| x509::verify_chain(&leaf.der, &intermediates, ca, now).is_ok());
                if !trusted {
                    return refuse(format!(
                        "the certificate of '{device_id}' does not chain to a CA this hub trusts"
                    ));
                }
            }
            None
        }
        AuthenticationType::None => {
            return refuse(format!("device '{device_id}' has no credentials"));
        }
    };
    Ok(Admitted {
        record,
        token_expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_device() {
        let t = |sr: &str| format!("SharedAccessSignature sr={sr}&sig=abc&se=1");
        assert_eq!(
            token_device(&t("localhost%2Fdevices%2Fdev-1"), "localhost"),
            Ok("dev-1".to_owned())
        );
        assert_eq!(
            token_device(&t("LocalHost:443/Devices/dev%3A1/"), "localhost"),
            Ok("dev:1".to_owned())
        );
        assert!(token_device(&t("other/devices/dev-1"), "localhost").is_err());
        assert!(token_device(&t("localhost/devices/dev-1/modules/m"), "localhost").is_err());
        assert!(token_device(&t("localhost"), "localhost").is_err());
        assert!(token_device("not a token", "localhost").is_err());
    }
}
