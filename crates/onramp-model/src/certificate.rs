//! CA certificates of a provisioning service and their proof of possession,
//! in the shape of Azure's `certificates` resource (`CertificateResponse`,
//! `VerificationCodeResponse`).

use serde::{Deserialize, Serialize};

json_object! {
    /// Body of `PUT /certificates/{name}` and of `POST …/verify`.
    #[derive(Eq)]
    pub struct CertificateBody {
        /// PEM text or base64 DER.
        #[serde(default)]
        pub certificate: String,
        /// Uploading with `true` skips the proof of possession.
        pub is_verified: Option<bool>,
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateProperties {
    pub subject: String,
    /// RFC 1123 date.
    pub expiry: String,
    /// SHA-1 thumbprint, upper-case hex (what Azure shows).
    pub thumbprint: String,
    pub is_verified: bool,
    /// Base64 DER.
    pub certificate: String,
    pub created: String,
    pub updated: String,
    /// Only in a `generateVerificationCode` answer.
    pub verification_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    pub properties: CertificateProperties,
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    pub value: Vec<CertificateResponse>,
}
