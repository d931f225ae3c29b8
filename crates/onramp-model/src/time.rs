//! Timestamps as Azure writes them: RFC 3339, UTC, seven fractional digits, `Z`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

/// A point in time, serialised as `2022-08-31T22:02:50.5163352Z`.
///
/// Parsing accepts any RFC 3339 form (any precision, any offset) because
/// clients echo timestamps back in whatever form their JSON library prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(OffsetDateTime);

impl UtcTime {
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    pub fn from_unix_nanos(nanos: i128) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .map(Self)
    }

    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.unix_timestamp()
    }

    pub fn inner(&self) -> OffsetDateTime {
        self.0
    }

    pub fn parse(text: &str) -> Option<Self> {
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .map(|t| Self(t.to_offset(UtcOffset::UTC)))
    }

    /// HTTP-date form (RFC 1123), used by the certificate resources.
    pub fn to_http_date(&self) -> String {
        let t = self.0;
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
            DAYS[t.weekday().number_days_from_monday() as usize],
            t.day(),
            MONTHS[(u8::from(t.month()) - 1) as usize],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl From<OffsetDateTime> for UtcTime {
    fn from(t: OffsetDateTime) -> Self {
        Self(t.to_offset(UtcOffset::UTC))
    }
}

impl UtcTime {
    /// RFC 3339 in UTC with `digits` fractional digits (at most 9; 3 is
    /// milliseconds), truncated.
    pub fn to_rfc3339(&self, digits: u32) -> String {
        let digits = digits.min(9);
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:0width$}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 10u32.pow(9 - digits),
            width = digits as usize
        )
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 100-nanosecond ticks: the seven digits .NET (and so Azure) prints.
        f.write_str(&self.to_rfc3339(7))
    }
}

impl Serialize for UtcTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        UtcTime::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{text}' is not an RFC 3339 timestamp such as 2024-01-31T12:00:00Z"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_seven_fraction_digits_and_parses_back() {
        let t = UtcTime::parse("2022-08-31T22:02:50.5163352Z").unwrap();
        assert_eq!(t.to_string(), "2022-08-31T22:02:50.5163352Z");
        let t = UtcTime::parse("2022-08-31T23:02:50+01:00").unwrap();
        assert_eq!(t.to_string(), "2022-08-31T22:02:50.0000000Z");
        assert!(UtcTime::parse("yesterday").is_none());
    }

    #[test]
    fn http_date() {
        let t = UtcTime::parse("2017-10-12T19:23:50Z").unwrap();
        assert_eq!(t.to_http_date(), "Thu, 12 Oct 2017 19:23:50 GMT");
    }
}
