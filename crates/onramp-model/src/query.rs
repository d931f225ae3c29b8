//! Query specifications and bulk operations of the service API.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::enrollment::{EnrollmentGroup, IndividualEnrollment, case_insensitive_enum};

/// `{"query": "SELECT * FROM enrollments"}`; SDKs also send `"*"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    #[serde(default)]
    pub query: String,
}

case_insensitive_enum!(
    /// Node spells the third mode `updateIfMatchEtag`; others `updateIfMatchETag`.
    BulkMode {
        Create => "create",
        Update => "update",
        UpdateIfMatchETag => "updateIfMatchETag",
        Delete => "delete",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperation {
    pub mode: BulkMode,
    #[serde(default)]
    pub enrollments: Vec<IndividualEnrollment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperation {
    pub mode: BulkMode,
    #[serde(default)]
    pub enrollment_groups: Vec<EnrollmentGroup>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationResult {
    pub is_successful: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BulkEnrollmentOperationError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationError {
    pub registration_id: String,
    pub error_code: u32,
    pub error_status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationResult {
    pub is_successful: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BulkEnrollmentGroupOperationError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationError {
    pub enrollment_group_id: String,
    pub error_code: u32,
    pub error_status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_mode_any_case() {
        let op: BulkEnrollmentOperation =
            serde_json::from_str(r#"{"mode":"updateIfMatchEtag","enrollments":[]}"#).unwrap();
        assert_eq!(op.mode, BulkMode::UpdateIfMatchETag);
        assert_eq!(serde_json::to_value(op.mode).unwrap(), "updateIfMatchETag");
    }
}
