//! Identifiers with rules: registration IDs, enrollment group IDs, IoT Hub
//! device IDs, ID scopes, `api-version` values and ETags.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest registration or enrollment group ID Azure accepts.
pub const MAX_ID_LEN: usize = 128;

/// Why a client's identifier or version was refused. The message names the
/// value (shortened and with control characters escaped) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the {what} is empty; use 1 to {max} characters")]
    Empty { what: &'static str, max: usize },
    #[error("the {what} '{shown}' is {chars} characters long; the limit is {max}")]
    TooLong {
        what: &'static str,
        shown: String,
        chars: usize,
        max: usize,
    },
    #[error("the {what} '{shown}' contains '{bad}'; {allowed}")]
    BadCharacter {
        what: &'static str,
        shown: String,
        bad: String,
        allowed: String,
    },
    #[error("the {what} '{shown}' must end with a letter, a digit or '-'")]
    BadEnd { what: &'static str, shown: String },
    #[error(
        "api-version '{0}' is not an API version; send a date such as 2021-10-01, \
         optionally followed by a label such as -preview"
    )]
    ApiVersion(String),
    #[error("'{0}' is not an ID scope; an ID scope looks like 0ne0001A2B3")]
    IdScope(String),
}

/// The case-folded form of an ID, under which stores keep and find records
/// (IDs compare case-insensitively). It is made only from an ID, so no
/// lookup can use a spelling that was not folded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IdKey(String);

impl IdKey {
    pub fn of(id: &str) -> Self {
        Self(id.to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for IdKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A registration ID (or enrollment group ID) that passed [`RegistrationId::parse`].
///
/// IDs are case-insensitive: [`RegistrationId::key`] is the lower-case form used
/// for lookups, while the original spelling is kept for display.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Checks Azure's rules: 1 to 128 characters from `A-Z a-z 0-9 - . _ :`,
    /// ending with a letter, digit or `-`.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        check_id(text, "registration ID").map(|()| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-folded form under which the ID is stored and looked up.
    pub fn key(&self) -> IdKey {
        IdKey::of(&self.0)
    }
}

/// Validates an enrollment group ID (same alphabet and length as registration IDs).
pub fn check_group_id(text: &str) -> Result<(), IdError> {
    check_id(text, "enrollment group ID")
}

fn check_id(text: &str, what: &'static str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty {
            what,
            max: MAX_ID_LEN,
        });
    }
    let chars = text.chars().count();
    if chars > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            shown: text.chars().take(16).chain(['…']).collect(),
            chars,
            max: MAX_ID_LEN,
        });
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(IdError::BadCharacter {
            what,
            shown: text.to_owned(),
            bad: bad.to_string(),
            allowed: "only letters, digits and - . _ : are allowed".into(),
        });
    }
    // Azure's rule constrains the last character only; `_dev` and `-a` are IDs.
    let last = text.as_bytes()[text.len() - 1];
    if !(last.is_ascii_alphanumeric() || last == b'-') {
        return Err(IdError::BadEnd {
            what,
            shown: text.to_owned(),
        });
    }
    Ok(())
}

/// Longest IoT Hub device ID.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// What IoT Hub allows in a device ID besides ASCII letters and digits (its
/// identity registry documentation; `+` and `#` are not among them).
pub const DEVICE_ID_SPECIALS: &str = "-.%_*?!(),:=@$'";

/// Checks IoT Hub's rule for device IDs: 1 to 128 characters, ASCII letters
/// and digits plus [`DEVICE_ID_SPECIALS`]; case-sensitive.
pub fn check_device_id(id: &str) -> Result<(), IdError> {
    const WHAT: &str = "device ID";
    if id.is_empty() {
        return Err(IdError::Empty {
            what: WHAT,
            max: MAX_DEVICE_ID_LEN,
        });
    }
    let chars = id.chars().count();
    if chars > MAX_DEVICE_ID_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            shown: shown(id, 16),
            chars,
            max: MAX_DEVICE_ID_LEN,
        });
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || DEVICE_ID_SPECIALS.contains(*c)))
    {
        return Err(IdError::BadCharacter {
            what: WHAT,
            shown: shown(id, 32),
            bad: bad.escape_default().to_string(),
            allowed: format!("use ASCII letters, digits and {DEVICE_ID_SPECIALS}"),
        });
    }
    Ok(())
}

/// Checks an `api-version` value: a date, `YYYY-MM-DD`, optionally followed
/// by `-` and a label of letters (`2017-08-31-preview`). Every version Azure
/// has published has this form, so devices in the field that still send old
/// ones are served; anything else is not an API version at all.
pub fn check_api_version(value: &str) -> Result<(), IdError> {
    let refuse = || Err(IdError::ApiVersion(shown(value, 32)));
    let (Some(date), label) = (value.get(..10), value.get(10..)) else {
        return refuse();
    };
    let b = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return refuse();
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return refuse();
    }
    match label {
        Some("") | None => Ok(()),
        Some(l) => match l.strip_prefix('-') {
            Some(word)
                if (1..=20).contains(&word.len())
                    && word.bytes().all(|c| c.is_ascii_alphabetic()) =>
            {
                Ok(())
            }
            _ => refuse(),
        },
    }
}

/// At most `max` characters of a client's text, with control characters
/// escaped, for an error message.
fn shown(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The ID scope that names one provisioning service to devices, e.g. `0ne0001A2B3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdScope(String);

impl IdScope {
    /// Accepts what a device may send: 1 to 64 ASCII letters and digits.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(IdError::IdScope(shown(text, 64)));
        }
        Ok(Self(text.to_owned()))
    }

    /// Azure's form: `0ne` followed by eight upper-case hex digits.
    pub fn from_number(n: u32) -> Self {
        Self(format!("0ne{n:08X}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// ID scopes compare case-insensitively.
    pub fn key(&self) -> IdKey {
        IdKey::of(&self.0)
    }
}

/// An entity tag in the quoted form Azure returns, e.g. `"\"1a2b3c4d5e6f7a8b\""`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ETag(String);

impl ETag {
    /// Wraps an opaque value in quotes.
    pub fn from_opaque(value: &str) -> Self {
        Self(format!("\"{value}\""))
    }

    /// Keeps a tag exactly as a client or a store gave it.
    pub fn from_raw(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag without `W/` and surrounding quotes: what comparisons use.
    pub fn opaque(&self) -> &str {
        strip_tag(&self.0)
    }

    /// `If-Match` semantics: equal opaque values, or the wildcard `*`.
    pub fn matches(&self, if_match: &str) -> bool {
        let wanted = strip_tag(if_match.trim());
        wanted == "*" || wanted == self.opaque()
    }
}

fn strip_tag(tag: &str) -> &str {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let tag = tag.strip_prefix('"').unwrap_or(tag);
    tag.strip_suffix('"').unwrap_or(tag)
}

/// Whether an `If-Match` value is the wildcard (`*` or `"*"`).
pub fn is_wildcard(if_match: &str) -> bool {
    strip_tag(if_match) == "*"
}

/// Each ID shows as its text, spelled as it was given.
macro_rules! display_as_text {
    ($($ty:ty),+) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )+};
}

display_as_text!(IdKey, RegistrationId, IdScope, ETag);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_rules() {
        for ok in [
            "a",
            "dev-01",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
            "a:b.c_d",
            "x-",
            "-a",
            "_dev",
            ":x",
        ] {
            assert!(RegistrationId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.", "a_", "a b", "ü", "a/b", &"x".repeat(129)] {
            assert!(RegistrationId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RegistrationId::parse("Dev-01").unwrap().key().as_str(),
            "dev-01"
        );
        let long = RegistrationId::parse(&"x".repeat(129))
            .unwrap_err()
            .to_string();
        assert!(long.contains("129 characters"), "{long}");
    }

    #[test]
    fn device_id_rules_are_iot_hubs() {
        for ok in [
            "a",
            "dev-01",
            "A.b%c_d*e?f!g(h)i,j:k=l@m$n'o",
            &"x".repeat(128),
        ] {
            assert!(check_device_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a+b",
            "a#b",
            "a/b",
            "ü",
            "a\nb",
            &"x".repeat(129),
        ] {
            assert!(check_device_id(bad).is_err(), "{bad}");
        }
        let long = check_device_id(&"x".repeat(300)).unwrap_err().to_string();
        assert!(
            long.contains("300 characters") && long.contains("128"),
            "{long}"
        );
        assert!(
            long.len() < 120,
            "the message does not repeat the whole ID: {long}"
        );
        let bad = check_device_id("a\u{1b}[31m").unwrap_err().to_string();
        assert!(!bad.contains('\u{1b}'), "{bad}");
    }

    #[test]
    fn api_versions_are_dates_with_an_optional_label() {
        for ok in [
            "2017-08-31-preview",
            "2017-11-15",
            "2018-11-01",
            "2019-03-31",
            "2021-06-01",
            "2021-10-01",
            "2025-07-01-preview",
            "2026-11-02-preview",
            "2021-04-12",
        ] {
            assert!(check_api_version(ok).is_ok(), "{ok}");
        }
        let long = "2021-10-01".to_owned() + &"x".repeat(5 * 1024);
        for bad in [
            "",
            " ",
            "latest",
            "2021-10-1",
            "2021-13-01",
            "2021-10-00",
            "2021/10/01",
            "2021-10-01-",
            "2021-10-01preview",
            "2021-10-01-pre view",
            "2021-10-01\0",
            "\u{ff}2021-10-01",
            "2021-10-01\u{ff}",
            "２０２１-10-01",
            long.as_str(),
        ] {
            let e = check_api_version(bad).unwrap_err().to_string();
            assert!(e.contains("api-version") && e.contains("2021-10-01"), "{e}");
            assert!(e.len() < 200 && !e.contains('\0'), "{e}");
        }
    }

    #[test]
    fn etag_comparison_is_tolerant() {
        let tag = ETag::from_opaque("abc");
        assert_eq!(tag.as_str(), "\"abc\"");
        assert!(tag.matches("\"abc\""));
        assert!(tag.matches("abc"));
        assert!(tag.matches("W/\"abc\""));
        assert!(tag.matches("*"));
        assert!(tag.matches("\"*\""));
        assert!(!tag.matches("\"abd\""));
    }

    #[test]
    fn id_scope_form() {
        assert_eq!(IdScope::from_number(0x1A2B3).as_str(), "0ne0001A2B3");
        assert!(IdScope::parse("0ne0001A2B3").is_ok());
        assert!(IdScope::parse("0ne/x").is_err());
    }
}
