//! Validation and normalisation of enrollments and groups written through the
//! service API. Every refusal names the field (as a JSON path) and the fix.

use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, EnrollmentKind, EnrollmentRecord,
    EnrollmentSettings, RegistrationId, SymmetricKeyAttestation, X509CertificateWithInfo,
    X509Certificates, ids::check_group_id,
};
use serde_json::Value;

mod tpm;

use crate::tenant::LinkedHub;
use crate::{ProvisioningError, keys, x509};

/// What a write is checked against.
pub struct Context<'a> {
    pub linked_hubs: &'a [LinkedHub],
    /// The service has a default webhook for custom allocation.
    pub service_webhook: bool,
    /// The stored attestation, whose keys are kept when a write leaves them out.
    pub existing_attestation: Option<&'a AttestationMechanism>,
}

/// Checks an enrollment or group PUT to `/enrollments/{path_id}` or
/// `/enrollmentGroups/{path_id}` and fills in what the service owns
/// (generated keys, certificate info, defaults).
pub fn enrollment<E: EnrollmentRecord>(
    path_id: &str,
    mut e: E,
    ctx: &Context<'_>,
) -> Result<E, ProvisioningError> {
    let id = match E::KIND {
        EnrollmentKind::Individual => RegistrationId::parse(path_id)
            .map(|id| id.as_str().to_owned())
            .map_err(ProvisioningError::invalid)?,
        EnrollmentKind::Group => {
            check_group_id(path_id).map_err(ProvisioningError::invalid)?;
            path_id.to_owned()
        }
    };
    if e.id().is_empty() {
        e.set_id(&id);
    } else if !e.id().eq_ignore_ascii_case(&id) {
        return Err(ProvisioningError::new(
            onramp_model::ErrorCode::RegistrationIdMismatch,
            format!(
                "{} '{}' in the body differs from '{id}' in the path; make them equal",
                E::KIND.id_field(),
                e.id(),
            ),
        ));
    }
    if let Some(device_id) = e.settings().device_id {
        check_device_id(device_id)?;
    }
    let checked = attestation(e.attestation_mut().take(), ctx, E::KIND)?;
    *e.attestation_mut() = Some(checked);
    check_settings(&e.settings(), ctx)?;
    let mut owned = e.service_owned();
    owned.fill_defaults();
    owned.clear();
    Ok(e)
}

fn attestation(
    att: Option<AttestationMechanism>,
    ctx: &Context<'_>,
    kind: EnrollmentKind,
) -> Result<AttestationMechanism, ProvisioningError> {
    let Some(att) = att else {
        return Err(ProvisioningError::invalid(
            "attestation is required; for example {\"type\": \"symmetricKey\"} to have keys generated",
        ));
    };
    match att.kind {
        AttestationType::None => Err(ProvisioningError::invalid(
            "attestation.type 'none' cannot authenticate a device; use symmetricKey, x509 or tpm",
        )),
        AttestationType::SymmetricKey => {
            let given = att.symmetric_key.unwrap_or_default();
            let kept = ctx
                .existing_attestation
                .filter(|a| a.kind == AttestationType::SymmetricKey)
                .and_then(|a| a.symmetric_key.clone())
                .unwrap_or_default();
            let pick = |field: &str,
                        given: Option<onramp_model::Secret>,
                        kept: Option<onramp_model::Secret>| {
                match given.filter(|k| !k.expose().trim().is_empty()) {
                    Some(k) => keys::validate(field, k.expose())
                        .map(|()| onramp_model::Secret::new(k.expose().trim()))
                        .map_err(ProvisioningError::invalid),
                    None => Ok(kept.unwrap_or_else(keys::generate)),
                }
            };
            let primary = pick(
                "attestation.symmetricKey.primaryKey",
                given.primary_key,
                kept.primary_key,
            )?;
            let secondary = pick(
                "attestation.symmetricKey.secondaryKey",
                given.secondary_key,
                kept.secondary_key,
            )?;
            Ok(AttestationMechanism {
                kind: AttestationType::SymmetricKey,
                symmetric_key: Some(SymmetricKeyAttestation {
                    primary_key: Some(primary),
                    secondary_key: Some(secondary),
                }),
                tpm: None,
                x509: None,
            })
        }
        AttestationType::Tpm => tpm::attestation(att.tpm, kind),
        AttestationType::X509 => {
            let Some(mut x) = att.x509 else {
                return Err(ProvisioningError::invalid(
                    "attestation.x509 is required when attestation.type is x509",
                ));
            };
            match kind {
                EnrollmentKind::Individual => {
                    if x.client_certificates.is_none() {
                        return Err(ProvisioningError::invalid(
                            "attestation.x509.clientCertificates is required for an individual enrollment; \
                             give the device's certificate as primary.certificate",
                        ));
                    }
                    x.signing_certificates = None;
                    x.ca_references = None;
                }
                EnrollmentKind::Group => {
                    if x.signing_certificates.is_none() && x.ca_references.is_none() {
                        return Err(ProvisioningError::invalid(
                            "an x509 enrollment group needs attestation.x509.signingCertificates \
                             (a root or intermediate certificate) or attestation.x509.caReferences",
                        ));
                    }
                    x.client_certificates = None;
                }
            }
            if let Some(c) = x.client_certificates.as_mut() {
                certificates("attestation.x509.clientCertificates", c)?;
            }
            if let Some(c) = x.signing_certificates.as_mut() {
                certificates("attestation.x509.signingCertificates", c)?;
            }
            if let Some(refs) = x.ca_references.as_mut() {
                refs.primary = refs.primary.take().filter(|r| !r.trim().is_empty());
                refs.secondary = refs.secondary.take().filter(|r| !r.trim().is_empty());
                if refs.primary.is_none() && refs.secondary.is_none() {
                    return Err(ProvisioningError::invalid(
                        "attestation.x509.caReferences names no certificate; set primary to the name of a CA certificate",
                    ));
                }
            }
            Ok(AttestationMechanism {
                kind: AttestationType::X509,
                x509: Some(x),
                tpm: None,
                symmetric_key: None,
            })
        }
    }
}

fn certificates(field: &str, certs: &mut X509Certificates) -> Result<(), ProvisioningError> {
    let mut any = false;
    for (slot, cert) in [
        ("primary", &mut certs.primary),
        ("secondary", &mut certs.secondary),
    ] {
        if let Some(c) = cert.as_mut() {
            fill_info(&format!("{field}.{slot}"), c)?;
            any = true;
        }
    }
    if !any {
        return Err(ProvisioningError::invalid(format!(
            "{field} holds no certificate; set {field}.primary.certificate to a PEM or base64 DER certificate"
        )));
    }
    Ok(())
}

fn fill_info(field: &str, cert: &mut X509CertificateWithInfo) -> Result<(), ProvisioningError> {
    let Some(text) = cert.certificate.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Err(ProvisioningError::invalid(format!(
            "{field}.certificate is missing; give the certificate as PEM text or base64 DER"
        )));
    };
    let info = x509::info(text)
        .map_err(|e| ProvisioningError::invalid(format!("{field}.certificate: {e}")))?;
    cert.info = Some(info);
    Ok(())
}

/// The hub would refuse a device ID outside IoT Hub's rules when the device
/// registers; refusing the enrollment now says so while it can be fixed.
fn check_device_id(id: &str) -> Result<(), ProvisioningError> {
    onramp_model::ids::check_device_id(id)
        .map_err(|m| ProvisioningError::invalid(format!("deviceId: {m}")))
}

/// The twin, the hubs and the allocation an enrollment names must make sense
/// together and with the service's linked hubs.
fn check_settings(
    settings: &EnrollmentSettings<'_>,
    ctx: &Context<'_>,
) -> Result<(), ProvisioningError> {
    if let Some(twin) = settings.initial_twin {
        if let Some(tags) = &twin.tags {
            check_twin_keys("initialTwin.tags", tags, 1)?;
        }
        if let Some(desired) = twin.desired() {
            check_twin_keys("initialTwin.properties.desired", desired, 1)?;
        }
    }
    let hubs = settings.iot_hubs.unwrap_or_default();
    for (i, name) in hubs.iter().enumerate() {
        if !ctx.linked_hubs.iter().any(|h| h.is_named(name)) {
            return Err(ProvisioningError::invalid(format!(
                "iotHubs[{i}] '{name}' is not linked to this provisioning service; \
                 link it first (onramp linked-hub add) or remove it from iotHubs"
            )));
        }
    }
    if let Some(name) = settings.iot_hub_host_name.filter(|n| !n.is_empty())
        && !ctx.linked_hubs.iter().any(|h| h.is_named(name))
    {
        return Err(ProvisioningError::invalid(format!(
            "iotHubHostName '{name}' is not linked to this provisioning service; link it first"
        )));
    }
    match settings.allocation_policy {
        Some(AllocationPolicy::Static) => {
            let count = if hubs.is_empty() {
                usize::from(settings.iot_hub_host_name.is_some_and(|n| !n.is_empty()))
            } else {
                hubs.len()
            };
            if count != 1 {
                return Err(ProvisioningError::invalid(format!(
                    "allocationPolicy static needs exactly one hub in iotHubs, found {count}"
                )));
            }
        }
        Some(AllocationPolicy::Custom) => {
            let Some(def) = settings.custom_allocation_definition else {
                if ctx.service_webhook {
                    return Ok(());
                }
                return Err(ProvisioningError::invalid(
                    "allocationPolicy custom needs customAllocationDefinition with webhookUrl and apiVersion \
                     (or a service default: onramp service update --webhook-url)",
                ));
            };
            let url = def.webhook_url.trim();
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
                return Err(ProvisioningError::invalid(format!(
                    "customAllocationDefinition.webhookUrl '{url}' is not an http(s) URL"
                )));
            }
            if def.api_version.trim().is_empty() {
                return Err(ProvisioningError::invalid(
                    "customAllocationDefinition.apiVersion is required, e.g. 2021-10-01",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Twin property names: no `.`, `$`, spaces or control characters; at most
/// 10 levels deep (IoT Hub's rules, checked here so the hub never refuses).
fn check_twin_keys(
    path: &str,
    map: &serde_json::Map<String, Value>,
    depth: usize,
) -> Result<(), ProvisioningError> {
    if depth > 10 {
        return Err(ProvisioningError::invalid(format!(
            "{path} nests deeper than 10 levels; flatten it"
        )));
    }
    for (key, value) in map {
        if key.is_empty()
            || key.len() > 1024
            || key
                .chars()
                .any(|c| c == '.' || c == '$' || c == ' ' || c.is_control())
        {
            return Err(ProvisioningError::invalid(format!(
                "{path} has the property name '{key}'; twin property names cannot be empty, \
                 longer than 1024 bytes, or contain '.', '$', spaces or control characters"
            )));
        }
        if let Value::Object(inner) = value {
            check_twin_keys(&format!("{path}.{key}"), inner, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_model::{EnrollmentGroup, IndividualEnrollment, ProvisioningStatus, Secret};

    fn ctx() -> Context<'static> {
        Context {
            linked_hubs: &[],
            service_webhook: false,
            existing_attestation: None,
        }
    }

    /// An enrollment with this attestation and nothing else.
    fn attested(attestation: AttestationMechanism) -> IndividualEnrollment {
        IndividualEnrollment {
            attestation: Some(attestation),
            ..Default::default()
        }
    }

    /// A symmetric-key enrollment whose devices get this hub device ID.
    fn with_device_id(device_id: impl Into<String>) -> IndividualEnrollment {
        IndividualEnrollment {
            attestation: sym(),
            device_id: Some(device_id.into()),
            ..Default::default()
        }
    }

    fn sym() -> Option<AttestationMechanism> {
        Some(AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            ..Default::default()
        })
    }

    #[test]
    fn generates_keys_and_fills_defaults() {
        let e = IndividualEnrollment {
            attestation: sym(),
            ..Default::default()
        };
        let e = enrollment("Dev-1", e, &ctx()).unwrap();
        assert_eq!(e.registration_id, "Dev-1");
        let keys = e.attestation.unwrap().symmetric_key.unwrap();
        assert!(keys.primary_key.is_some() && keys.secondary_key.is_some());
        assert_ne!(keys.primary_key, keys.secondary_key);
        assert_eq!(e.provisioning_status, Some(ProvisioningStatus::Enabled));
    }

    #[test]
    fn keeps_stored_keys_when_an_update_leaves_them_out() {
        let stored = AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            symmetric_key: Some(SymmetricKeyAttestation {
                primary_key: Some(Secret::new("c2VjcmV0LWtleS1mb3ItdGVzdHMtMTY=")),
                secondary_key: Some(Secret::new("b3RoZXItc2VjcmV0LWtleS1mb3ItdGVzdHM=")),
            }),
            ..Default::default()
        };
        let c = Context {
            linked_hubs: &[],
            service_webhook: false,
            existing_attestation: Some(&stored),
        };
        let e = IndividualEnrollment {
            attestation: sym(),
            ..Default::default()
        };
        let e = enrollment("d", e, &c).unwrap();
        assert_eq!(e.attestation, Some(stored));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(IndividualEnrollment, &str)> = vec![
            (IndividualEnrollment::default(), "attestation is required"),
            (
                IndividualEnrollment {
                    registration_id: "other".into(),
                    attestation: sym(),
                    ..Default::default()
                },
                "differs from 'd'",
            ),
            (
                attested(AttestationMechanism {
                    kind: AttestationType::SymmetricKey,
                    symmetric_key: Some(SymmetricKeyAttestation {
                        primary_key: Some(Secret::new("c2hvcnQ=")),
                        secondary_key: None,
                    }),
                    ..Default::default()
                }),
                "attestation.symmetricKey.primaryKey decodes to 5 bytes",
            ),
            (
                IndividualEnrollment {
                    attestation: sym(),
                    iot_hubs: Some(vec!["nowhere".into()]),
                    ..Default::default()
                },
                "iotHubs[0] 'nowhere' is not linked",
            ),
            (
                IndividualEnrollment {
                    attestation: sym(),
                    allocation_policy: Some(AllocationPolicy::Static),
                    ..Default::default()
                },
                "exactly one hub",
            ),
            (
                attested(AttestationMechanism {
                    kind: AttestationType::Tpm,
                    ..Default::default()
                }),
                "attestation.tpm is required",
            ),
            (
                attested(AttestationMechanism {
                    kind: AttestationType::Tpm,
                    tpm: Some(onramp_model::TpmAttestation {
                        endorsement_key: "%%%".into(),
                        storage_root_key: None,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                "attestation.tpm.endorsementKey is not valid base64",
            ),
            (
                attested(AttestationMechanism {
                    kind: AttestationType::X509,
                    x509: Some(onramp_model::X509Attestation {
                        client_certificates: Some(X509Certificates {
                            primary: Some(X509CertificateWithInfo {
                                certificate: Some("nonsense".into()),
                                info: None,
                            }),
                            secondary: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                "attestation.x509.clientCertificates.primary.certificate",
            ),
            (
                IndividualEnrollment {
                    attestation: sym(),
                    initial_twin: Some(serde_json::from_str(r#"{"tags":{"a.b":1}}"#).unwrap()),
                    ..Default::default()
                },
                "initialTwin.tags has the property name 'a.b'",
            ),
            (
                with_device_id("bad id"),
                "deviceId: the device ID 'bad id' contains ' '",
            ),
            (
                with_device_id("x".repeat(129)),
                "deviceId: the device ID 'xxxxxxxxxxxxxxxx…' is 129 characters long",
            ),
            (with_device_id("a+b"), "contains '+'"),
        ];
        for (e, want) in cases {
            let err = enrollment("d", e, &ctx()).unwrap_err();
            assert!(
                err.message.contains(want),
                "{} does not contain {want}",
                err.message
            );
        }
    }

    #[test]
    fn tpm_keys_must_be_rsa_2048_storage_keys() {
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        let ek = STANDARD.encode(include_bytes!("../tests/data/tpm/ek.pub"));
        let srk = STANDARD.encode(include_bytes!("../tests/data/tpm/srk.pub"));
        let tpm = |ek: &str, srk: Option<&str>| IndividualEnrollment {
            attestation: Some(AttestationMechanism {
                kind: AttestationType::Tpm,
                tpm: Some(onramp_model::TpmAttestation {
                    endorsement_key: ek.into(),
                    storage_root_key: srk.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = enrollment("tpm-1", tpm(&format!(" {ek}\n"), Some(&srk)), &ctx()).unwrap();
        let kept = e.attestation.unwrap().tpm.unwrap();
        assert_eq!(kept.endorsement_key, ek);
        assert_eq!(kept.storage_root_key.as_deref(), Some(srk.as_str()));

        // Shaped like a TPM2B_PUBLIC (a size and that many bytes), but not a key.
        let mut fake = vec![0x01, 0x16];
        fake.extend([0xAB; 0x116]);
        let fake = STANDARD.encode(fake);
        let short = STANDARD.encode(&include_bytes!("../tests/data/tpm/ek.pub")[..200]);
        for (record, expected) in [
            (
                tpm(&fake, None),
                "attestation.tpm.endorsementKey has type 0xabab (unknown); an RSA key",
            ),
            (
                tpm(&short, None),
                "attestation.tpm.endorsementKey has a TPM2B_PUBLIC size field of 314 bytes, but 198 bytes follow it",
            ),
            (
                tpm(&ek, Some(&fake)),
                "attestation.tpm.storageRootKey has type 0xabab",
            ),
        ] {
            let err = enrollment("tpm-1", record, &ctx()).unwrap_err();
            assert_eq!(err.code, onramp_model::ErrorCode::InvalidArgument);
            assert!(err.message.starts_with(expected), "{}", err.message);
        }
    }

    #[test]
    fn tpm_groups_need_their_manufacturer_certificates() {
        let g = EnrollmentGroup {
            attestation: Some(AttestationMechanism {
                kind: AttestationType::Tpm,
                tpm: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            enrollment("g", g, &ctx())
                .unwrap_err()
                .message
                .starts_with("attestation.tpm.manufacturerCertificates needs at least one")
        );
    }
}
