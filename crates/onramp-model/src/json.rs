//! JSON bodies decoded so that an error names the member that failed
//! (`attestation.symmetricKey.primaryKey`), for the DPS service and device
//! APIs and the companion hub's REST API alike.

use std::fmt;

use serde::de::DeserializeOwned;

/// A body that is not the JSON a call expects: where, and why.
#[derive(Debug)]
pub struct BodyError {
    path: String,
    inner: serde_json::Error,
}

impl BodyError {
    /// ` at 'path'`, or nothing when the body as a whole is wrong.
    pub fn location(&self) -> String {
        if self.path == "." {
            String::new()
        } else {
            format!(" at '{}'", self.path)
        }
    }

    pub fn reason(&self) -> &serde_json::Error {
        &self.inner
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON{}: {}", self.location(), self.inner)
    }
}

impl std::error::Error for BodyError {}

/// Decodes `bytes` as `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| BodyError {
        path: e.path().to_string(),
        inner: e.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Outer {
        #[allow(dead_code)]
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        count: u32,
    }

    #[test]
    fn names_the_failing_member_or_none_for_the_whole_body() {
        let e = decode::<Outer>(br#"{"inner":{"count":"x"}}"#).unwrap_err();
        assert_eq!(e.location(), " at 'inner.count'");
        let e = decode::<Outer>(b"42").unwrap_err();
        assert_eq!(e.location(), "");
        assert!(e.to_string().starts_with("invalid JSON: "), "{e}");
    }
}
