//! Shared access signatures: parsing, verification, signing, derived keys.
//!
//! SDKs disagree on how they spell a token (see the device protocol notes,
//! §2): `sr` raw or percent-encoded with either hex case, `skn` present,
//! empty or absent, fields in any order. One rule accepts them all: the HMAC
//! covers `sr` exactly as transmitted, and the resource check compares the
//! percent-decoded `sr` case-insensitively.

use aws_lc_rs::{constant_time, hmac};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// A token split into its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken<'a> {
    /// `sr` as transmitted: the signed string uses this form.
    pub resource_raw: &'a str,
    /// `sr` percent-decoded: the resource checks use this form.
    pub resource: String,
    /// `sig`, percent-decoded (base64 text).
    pub signature: String,
    /// `se` as transmitted.
    pub expiry_raw: &'a str,
    /// `se` as seconds since the Unix epoch.
    pub expiry: i64,
    /// `skn`, when present and not empty.
    pub key_name: Option<String>,
}

/// Why a token was refused, or could not be signed or a key derived. The
/// messages are shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the token is not a SharedAccessSignature: {0}")]
    Malformed(String),
    #[error("the token expired at {expiry} (Unix seconds); the time now is {now}; sign a new one")]
    Expired { expiry: i64, now: i64 },
    #[error("the token is for resource '{actual}', but this request needs '{expected}'")]
    WrongResource { actual: String, expected: String },
    #[error("the token's signature does not match {0}")]
    BadSignature(String),
    #[error("the key is not base64")]
    KeyNotBase64,
    #[error("the group key is not base64")]
    GroupKeyNotBase64,
}

const PREFIX: &str = "sharedaccesssignature";

/// Splits a token. Accepts the `SharedAccessSignature ` prefix in any case, or none.
pub fn parse(token: &str) -> Result<SasToken<'_>, SasError> {
    let mut text = token.trim();
    if let Some(head) = text.get(..PREFIX.len())
        && head.eq_ignore_ascii_case(PREFIX)
    {
        text = text[PREFIX.len()..].trim_start();
    }
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for field in text.split('&').filter(|f| !f.is_empty()) {
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| SasError::Malformed(format!("field '{field}' has no '='")))?;
        match name.trim() {
            "sr" => sr = Some(value),
            "sig" => sig = Some(value),
            "se" => se = Some(value),
            "skn" => skn = Some(value),
            _ => {}
        }
    }
    let sr = sr.ok_or_else(|| SasError::Malformed("'sr' is missing".into()))?;
    let sig = sig.ok_or_else(|| SasError::Malformed("'sig' is missing".into()))?;
    let se = se.ok_or_else(|| SasError::Malformed("'se' is missing".into()))?;
    let expiry = se.trim().parse::<i64>().map_err(|_| {
        SasError::Malformed(format!("'se={se}' is not a number of seconds since 1970"))
    })?;
    Ok(SasToken {
        resource_raw: sr,
        resource: decode(sr),
        signature: decode(sig),
        expiry_raw: se,
        expiry,
        key_name: skn.map(decode).filter(|s| !s.is_empty()),
    })
}

/// Percent-decodes without turning `+` into a space (base64 uses `+`).
fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

impl SasToken<'_> {
    /// Refuses a token whose expiry lies more than `skew_seconds` in the past.
    pub fn check_expiry(&self, now: i64, skew_seconds: i64) -> Result<(), SasError> {
        if self.expiry.saturating_add(skew_seconds) < now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        Ok(())
    }

    /// Whether the decoded resource equals `expected`, ignoring case and a
    /// trailing slash.
    pub fn resource_is(&self, expected: &str) -> bool {
        self.resource
            .trim_end_matches('/')
            .eq_ignore_ascii_case(expected.trim_end_matches('/'))
    }

    /// The host the token is for: its resource up to the first `/`.
    pub fn resource_host(&self) -> &str {
        self.resource.split('/').next().unwrap_or_default()
    }

    /// Whether the token may be used on `request_path` (as sent, percent-encoded).
    ///
    /// A service token's resource is a URI prefix matched by whole path
    /// segments: `host` covers every path, `host/enrollments` covers
    /// `/enrollments` and what lies below it, but not `/enrollmentsX` or
    /// `/enrollmentGroups`. Segments are compared percent-decoded and without
    /// case, as routes and IDs are (SDKs lower-case or encode them).
    pub fn covers_path(&self, request_path: &str) -> bool {
        let mut path = request_path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode);
        self.resource
            .split('/')
            .skip(1)
            .filter(|s| !s.is_empty())
            .all(|want| {
                path.next()
                    .is_some_and(|got| got.eq_ignore_ascii_case(want))
            })
    }

    /// Checks the signature against one base64 key. The signed string is the
    /// transmitted `sr`; hand-made tokens that signed the decoded or
    /// canonically encoded resource are accepted too.
    pub fn is_signed_by(&self, key_base64: &str) -> bool {
        let Ok(key) = STANDARD.decode(key_base64.trim()) else {
            return false;
        };
        self.is_signed_with(&key)
    }

    /// [`Self::is_signed_by`] with the key's bytes (a TPM's imported key).
    pub fn is_signed_with(&self, key: &[u8]) -> bool {
        let Ok(expected) = STANDARD.decode(self.signature.trim()) else {
            return false;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let matches = |resource: &str| {
            let tag = hmac::sign(&key, format!("{resource}\n{}", self.expiry_raw).as_bytes());
            constant_time::verify_slices_are_equal(tag.as_ref(), &expected).is_ok()
        };
        if matches(self.resource_raw) {
            return true;
        }
        if self.resource != self.resource_raw && matches(&self.resource) {
            return true;
        }
        let encoded = encode(&self.resource);
        encoded != self.resource_raw
            && (matches(&encoded) || matches(&encoded.to_ascii_lowercase()))
    }
}

/// Percent-encodes everything but letters and digits, upper-case hex.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// Signs `resource` (encoded first) until `expiry`, as a complete token.
pub fn sign(
    resource: &str,
    key_base64: &str,
    expiry: i64,
    key_name: Option<&str>,
) -> Result<String, SasError> {
    let key = STANDARD
        .decode(key_base64.trim())
        .map_err(|_| SasError::KeyNotBase64)?;
    let sr = encode(resource);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let tag = hmac::sign(&key, format!("{sr}\n{expiry}").as_bytes());
    let sig = encode(&STANDARD.encode(tag.as_ref()));
    let mut token = format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}");
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&encode(name));
    }
    Ok(token)
}

/// The key of one device of a symmetric-key enrollment group:
/// `base64(HMAC-SHA256(base64decode(group key), registration ID))`.
pub fn derive_device_key(
    group_key_base64: &str,
    registration_id: &str,
) -> Result<String, SasError> {
    let key = STANDARD
        .decode(group_key_base64.trim())
        .map_err(|_| SasError::GroupKeyNotBase64)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    Ok(STANDARD.encode(hmac::sign(&key, registration_id.as_bytes()).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMi1ieXRlcyE=";

    fn sign_raw(sr: &str, se: i64, key: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &STANDARD.decode(key).unwrap());
        STANDARD.encode(hmac::sign(&key, format!("{sr}\n{se}").as_bytes()).as_ref())
    }

    fn lower_hex(encoded: &str) -> String {
        encoded
            .replace("%2B", "%2b")
            .replace("%2F", "%2f")
            .replace("%3D", "%3d")
    }

    #[test]
    fn documented_derived_key_example() {
        // The worked example of Azure's symmetric-key attestation documentation.
        let group = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
        assert_eq!(
            derive_device_key(group, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6").unwrap(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
    }

    #[test]
    fn accepts_every_sdk_spelling() {
        let se = 1_900_000_000;
        let expected = "0ne00TEST01/registrations/dev-01";
        // The SDKs differ in how they encode the resource (`sr`), in the
        // order of the fields after it and in how they write `skn`.
        let token = |sr: &str, sig: String, tail: &str| {
            format!("SharedAccessSignature sr={sr}&sig={sig}{tail}")
        };
        let sig = |sr: &str| encode(&sign_raw(sr, se, KEY));
        let (python_sr, c_sr) = (
            "0ne00TEST01%2Fregistrations%2Fdev-01",
            "0ne00TEST01%2fregistrations%2fdev-01",
        );
        let edge_sr = "0ne00test01%2Fregistrations%2Fdev-01";
        let spellings = [
            // Node: raw resource, skn=registration, order sr,sig,skn,se
            token(
                expected,
                sig(expected),
                &format!("&skn=registration&se={se}"),
            ),
            // Python: %2F, no skn
            token(python_sr, sig(python_sr), &format!("&se={se}")),
            // C: %2f lower-case, in the signature too
            token(
                c_sr,
                lower_hex(&sig(c_sr)),
                &format!("&se={se}&skn=registration"),
            ),
            // Java: raw, empty skn
            token(expected, sig(expected), &format!("&se={se}&skn=")),
            // Edge: lower-cased then encoded
            token(edge_sr, sig(edge_sr), &format!("&se={se}&skn=registration")),
            // Hand-made: literal '+' left in the signature
            token(expected, sign_raw(expected, se, KEY), &format!("&se={se}")),
            // Our own signer
            sign(expected, KEY, se, Some("registration")).unwrap(),
        ];
        for token in &spellings {
            let t = parse(token).unwrap_or_else(|e| panic!("{token}: {e}"));
            assert!(t.resource_is(expected), "{token}");
            assert!(t.is_signed_by(KEY), "{token}");
            assert!(!t.is_signed_by("b3RoZXIta2V5"), "{token}");
            assert!(t.check_expiry(se - 10, 300).is_ok());
            assert!(matches!(
                t.check_expiry(se + 301, 300),
                Err(SasError::Expired { .. })
            ));
        }
    }

    #[test]
    fn a_resource_path_scopes_the_token_by_whole_segments() {
        let token = |sr: &str| format!("SharedAccessSignature sr={}&sig=x&se=1&skn=p", encode(sr));
        let covered = [
            ("dps.example.net", "/enrollments/dev-1"),
            ("dps.example.net/", "/registrations/dev-1"),
            ("dps.example.net/enrollments", "/enrollments"),
            ("dps.example.net/enrollments", "/enrollments/"),
            ("dps.example.net/enrollments", "/enrollments/dev-1"),
            (
                "dps.example.net/enrollments",
                "/Enrollments/dev-1/attestationmechanism",
            ),
            ("DPS.example.net/ENROLLMENTS/Dev-1", "/enrollments/dev-1"),
            ("dps.example.net/enrollments/dev:1", "/enrollments/dev%3A1"),
            ("dps.example.net/enrollments/", "/enrollments/dev-1"),
        ];
        let not_covered = [
            ("dps.example.net/enrollments", "/enrollmentsX/dev-1"),
            ("dps.example.net/enrollments", "/enrollmentGroups/g-1"),
            ("dps.example.net/enrollmentGroups", "/enrollments/dev-1"),
            ("dps.example.net/devices", "/enrollments/dev-1"),
            ("dps.example.net/enrollments/dev-1", "/enrollments/dev-10"),
            ("dps.example.net/enrollments/dev-1", "/enrollments"),
            ("dps.example.net/enrollments/dev-1", "/"),
        ];
        for (cases, covers) in [(&covered[..], true), (&not_covered[..], false)] {
            for &(sr, path) in cases {
                let text = token(sr);
                let t = parse(&text).unwrap();
                assert_eq!(t.covers_path(path), covers, "{sr} on {path}");
            }
        }
        // Raw, as Node sends it, and with lower-case hex, as Java does.
        for text in [
            "sr=dps.example.net/enrollments&sig=x&se=1",
            "sr=dps.example.net%2fenrollments&sig=x&se=1",
        ] {
            let t = parse(text).unwrap();
            assert_eq!(t.resource_host(), "dps.example.net");
            assert!(t.covers_path("/enrollments/a"), "{text}");
            assert!(!t.covers_path("/enrollmentGroups/a"), "{text}");
        }
    }

    #[test]
    fn malformed_tokens_are_named() {
        assert!(
            matches!(parse("SharedAccessSignature sig=x&se=1"), Err(SasError::Malformed(m)) if m.contains("'sr'"))
        );
        assert!(
            matches!(parse("sr=a&sig=b&se=soon"), Err(SasError::Malformed(m)) if m.contains("se=soon"))
        );
        assert!(matches!(parse("sr=a&sig"), Err(SasError::Malformed(_))));
        let t = parse("sr=a&sig=!!!&se=5").unwrap();
        assert!(!t.is_signed_by(KEY));
        assert!(!t.is_signed_by("not base64 at all"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            if let Ok(t) = parse(&s) {
                let _ = t.is_signed_by(KEY);
            }
        }
    }
}
