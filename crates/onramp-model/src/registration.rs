//! The device API (register, operation status, status lookup) and the
//! registration state that both APIs expose.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::enrollment::{TpmAttestation, X509CertificateInfo, case_insensitive_enum};
use crate::{ETag, UtcTime};

json_object! {
    /// Body of `PUT /{idScope}/registrations/{registrationId}/register`.
    ///
    /// Every member is optional: C# over MQTT/AMQP sends no `registrationId`,
    /// Python always sends `payload` (possibly `null`), Java sends `payload` as a
    /// JSON string. Identity never comes from this body alone.
    pub struct DeviceRegistration {
        pub registration_id: Option<String>,
        pub tpm: Option<TpmAttestation>,
        /// Any JSON value; `null` counts as absent.
        #[serde(default, deserialize_with = "null_as_none")]
        pub payload: Option<Value>,
        pub csr: Option<String>,
    }
}

fn null_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(if v.is_null() { None } else { Some(v) })
}

case_insensitive_enum!(
    /// Status of a registration. Onramp never sends `unassigned` to a device:
    /// several SDKs treat it as fatal or as a TPM challenge.
    RegistrationStatus {
        Unassigned => "unassigned",
        Assigning => "assigning",
        Assigned => "assigned",
        Failed => "failed",
        Disabled => "disabled",
    }
);

impl RegistrationStatus {
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            RegistrationStatus::Assigning | RegistrationStatus::Unassigned
        )
    }
}

case_insensitive_enum!(
    /// Why a device ended on its hub.
    Substatus {
        InitialAssignment => "initialAssignment",
        DeviceDataMigrated => "deviceDataMigrated",
        DeviceDataReset => "deviceDataReset",
        ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
    }
);

/// `RegistrationOperationStatus`: the answer to register and to every poll.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    pub operation_id: String,
    pub status: RegistrationStatus,
    pub registration_state: Option<DeviceRegistrationState>,
}

/// The registration record of one device: `DeviceRegistrationResult` on the
/// device API, `DeviceRegistrationState` on the service API.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    pub registration_id: String,
    pub created_date_time_utc: Option<UtcTime>,
    pub assigned_hub: Option<String>,
    pub device_id: Option<String>,
    pub status: RegistrationStatus,
    pub substatus: Option<Substatus>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub last_updated_date_time_utc: Option<UtcTime>,
    pub etag: Option<ETag>,
    /// Only ever an object (Java's SDK parses it as one).
    pub payload: Option<Value>,
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
    pub x509: Option<X509RegistrationResult>,
    pub tpm: Option<TpmRegistrationResult>,
    pub issued_certificate_chain: Option<Vec<String>>,
}

impl DeviceRegistrationState {
    pub fn new(registration_id: impl Into<String>, status: RegistrationStatus) -> Self {
        Self {
            registration_id: registration_id.into(),
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status,
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
            symmetric_key: None,
            x509: None,
            tpm: None,
            issued_certificate_chain: None,
        }
    }
}

json_object! {
    #[derive(Eq)]
    pub struct SymmetricKeyRegistrationResult {
        pub enrollment_group_id: Option<String>,
    }
}

json_object! {
    #[derive(Eq)]
    pub struct X509RegistrationResult {
        pub certificate_info: Option<X509CertificateInfo>,
        pub enrollment_group_id: Option<String>,
        pub signing_certificate_info: Option<X509CertificateInfo>,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRegistrationResult {
    pub authentication_key: String,
}

/// The 401 body of the TPM nonce challenge. It must never carry `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRegistrationChallenge {
    pub message: String,
    pub authentication_key: String,
    pub key_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_body_accepts_every_sdk_shape() {
        let parse = |body| serde_json::from_str::<DeviceRegistration>(body).unwrap();
        let python = parse(r#"{"payload": null, "registrationId": "x"}"#);
        assert_eq!(python.payload, None);
        let java = parse(r#"{"registrationId":"x","payload":"{\"a\":1}"}"#);
        assert_eq!(java.payload, Some(Value::String("{\"a\":1}".into())));
        assert_eq!(parse("{}").registration_id, None);
    }

    #[test]
    fn tpm_challenge_and_result_shapes() {
        // The 401 body: these three members and never `status`, which the C
        // SDK would take for a registration answer.
        let challenge = TpmRegistrationChallenge {
            message: "sign a token with the key in authenticationKey".into(),
            authentication_key: "ADQAIA==".into(),
            key_name: "registration".into(),
        };
        let v = serde_json::to_value(&challenge).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["authenticationKey", "keyName", "message"]);
        assert_eq!(
            serde_json::from_value::<TpmRegistrationChallenge>(v).unwrap(),
            challenge
        );
        // The final key travels as registrationState.tpm.authenticationKey.
        let mut state = DeviceRegistrationState::new("tpm-dev", RegistrationStatus::Assigned);
        state.tpm = Some(TpmRegistrationResult {
            authentication_key: "AFQ=".into(),
        });
        let v = serde_json::to_value(&state).unwrap();
        assert_eq!(v["tpm"], serde_json::json!({"authenticationKey": "AFQ="}));
    }

    #[test]
    fn operation_status_shape() {
        let mut state = DeviceRegistrationState::new("dev", RegistrationStatus::Assigned);
        state.assigned_hub = Some("hub".into());
        state.substatus = Some(Substatus::InitialAssignment);
        state.error_code = None;
        let op = RegistrationOperationStatus {
            operation_id: "1.abc.def".into(),
            status: RegistrationStatus::Assigned,
            registration_state: Some(state),
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(v["status"], "assigned");
        assert_eq!(v["registrationState"]["substatus"], "initialAssignment");
        assert!(v["registrationState"].get("errorCode").is_none());
    }
}
