//! What an `enrollment create` or `group create` command line says: the
//! attestation and the settings of the record it writes.

use anyhow::Context;
use onramp_core::tpm::RsaPublic;
use onramp_model::{
    AllocationPolicy, AttestationMechanism, AttestationType, DeviceCapabilities, InitialTwin,
    ProvisioningStatus, Secret, SymmetricKeyAttestation, TpmAttestation, X509Attestation,
    X509CaReferences, X509CertificateWithInfo, X509Certificates,
};
use serde::Serialize;

use crate::cli::{EnrollmentSettings, EnrollmentSpec};

/// The attestation an enrollment or group gets from the command line:
/// certificates (`client` for an individual enrollment, signing
/// certificates for a group), a CA reference, or symmetric keys.
pub(super) fn attestation(
    spec: &EnrollmentSpec,
    group: bool,
) -> anyhow::Result<AttestationMechanism> {
    let read = |p: &std::path::PathBuf| -> anyhow::Result<X509CertificateWithInfo> {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        // The first certificate of the file (a chain file starts with the certificate itself).
        let first = pem
            .find("-----END CERTIFICATE-----")
            .map(|i| &pem[..i + 25])
            .unwrap_or(&pem);
        Ok(X509CertificateWithInfo {
            certificate: Some(first.to_owned()),
            info: None,
        })
    };
    if let Some(ek) = &spec.tpm_ek {
        let srk = spec.tpm_srk.as_deref();
        return Ok(AttestationMechanism {
            kind: AttestationType::Tpm,
            tpm: Some(TpmAttestation {
                endorsement_key: tpm_key(ek, "--tpm-ek")?.to_base64(),
                storage_root_key: srk
                    .map(|k| tpm_key(k, "--tpm-srk").map(|k| k.to_base64()))
                    .transpose()?,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if !spec.tpm_ca.is_empty() {
        return tpm_group(spec, group);
    }
    if let Some(name) = &spec.ca_reference {
        return Ok(AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(X509Attestation {
                ca_references: Some(X509CaReferences {
                    primary: Some(name.clone()),
                    secondary: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(primary) = &spec.certificate {
        let certs = X509Certificates {
            primary: Some(read(primary)?),
            secondary: spec.secondary_certificate.as_ref().map(read).transpose()?,
        };
        let x509 = if group {
            X509Attestation {
                signing_certificates: Some(certs),
                ..Default::default()
            }
        } else {
            X509Attestation {
                client_certificates: Some(certs),
                ..Default::default()
            }
        };
        return Ok(AttestationMechanism {
            kind: AttestationType::X509,
            x509: Some(x509),
            ..Default::default()
        });
    }
    Ok(AttestationMechanism {
        kind: AttestationType::SymmetricKey,
        symmetric_key: Some(SymmetricKeyAttestation {
            primary_key: spec.keys.key.clone().map(Secret::new),
            secondary_key: spec.keys.secondary_key.clone().map(Secret::new),
        }),
        ..Default::default()
    })
}

/// A TPM enrollment group (Onramp's extension): its manufacturer CA
/// certificates and allow list. The service checks each; the files are read here.
fn tpm_group(spec: &EnrollmentSpec, group: bool) -> anyhow::Result<AttestationMechanism> {
    if !group {
        anyhow::bail!(
            "--tpm-ca makes a TPM enrollment group (onramp group create); \
             enroll one TPM with --tpm-ek"
        );
    }
    let certificates = spec
        .tpm_ca
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list = |l: &Vec<String>| (!l.is_empty()).then(|| l.clone());
    Ok(AttestationMechanism {
        kind: AttestationType::Tpm,
        tpm: Some(TpmAttestation {
            manufacturer_certificates: Some(certificates),
            allow_registration_ids: list(&spec.allow_registration_id),
            allow_endorsement_key_hashes: list(&spec.allow_ek_hash),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A TPM key given on the command line: a file holding the marshaled
/// `TPM2B_PUBLIC` (as `tpm2_readpublic -f tss` writes it, or base64 of it),
/// or the base64 text itself. Checked here so a wrong file is named before
/// anything is sent.
pub(super) fn tpm_key(value: &str, flag: &str) -> anyhow::Result<RsaPublic> {
    let path = std::path::Path::new(value);
    let parsed = if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match RsaPublic::parse(&bytes) {
            Ok(key) => Ok(key),
            Err(binary) => match std::str::from_utf8(&bytes) {
                Ok(text) => RsaPublic::from_base64(text.trim()),
                Err(_) => Err(binary),
            },
        }
    } else {
        RsaPublic::from_base64(value.trim())
    };
    parsed.map_err(|e| anyhow::anyhow!("{flag} '{value}': the key {e}"))
}

/// What `--initial-twin`, `--allocation-policy` and `--iot-hub` say, in
/// the members' JSON form; what is not given is left out.
#[serde_with::skip_serializing_none]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AllocationSettings {
    initial_twin: Option<InitialTwin>,
    allocation_policy: Option<AllocationPolicy>,
    iot_hubs: Option<Vec<String>>,
}

impl AllocationSettings {
    pub(super) fn of(args: &EnrollmentSettings) -> anyhow::Result<Self> {
        Ok(Self {
            initial_twin: args.initial_twin.as_deref().map(initial_twin).transpose()?,
            allocation_policy: args
                .allocation_policy
                .as_deref()
                .map(allocation_policy)
                .transpose()?,
            iot_hubs: (!args.iot_hubs.is_empty()).then(|| args.iot_hubs.clone()),
        })
    }
}

/// What a `create` command line says besides the attestation, for an
/// enrollment or a group alike, in the members' JSON form.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SpecSettings {
    #[serde(flatten)]
    allocation: AllocationSettings,
    provisioning_status: ProvisioningStatus,
    capabilities: DeviceCapabilities,
}

pub(super) fn settings(spec: &EnrollmentSpec) -> anyhow::Result<SpecSettings> {
    Ok(SpecSettings {
        allocation: AllocationSettings::of(&spec.settings)?,
        provisioning_status: if spec.disabled {
            ProvisioningStatus::Disabled
        } else {
            ProvisioningStatus::Enabled
        },
        capabilities: DeviceCapabilities {
            iot_edge: spec.edge,
        },
    })
}

/// The JSON of `--initial-twin`.
pub(super) fn initial_twin(json: &str) -> anyhow::Result<InitialTwin> {
    serde_json::from_str(json).context("--initial-twin is not an initial twin JSON object")
}

/// The name given to `--allocation-policy`.
pub(super) fn allocation_policy(name: &str) -> anyhow::Result<AllocationPolicy> {
    AllocationPolicy::parse(name).ok_or_else(|| {
        anyhow::anyhow!("--allocation-policy '{name}': use hashed, static, geoLatency or custom")
    })
}
