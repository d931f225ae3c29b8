//! `host[:port]` as it appears in endpoints, hub host names, SAS resource URIs
//! and `Host` headers. One parser, so that every part of Onramp agrees on
//! IPv6 literals: `[::1]:8443` has a port, `::1` and `[::1]` do not.

use std::fmt;

/// An authority whose port is not a number from 0 to 65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAuthority(pub String);

impl fmt::Display for BadAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not host[:port]: give a host name or address, optionally followed by \
             ':' and a port from 0 to 65535 (IPv6 addresses in brackets when a port follows)",
            self.0
        )
    }
}

impl std::error::Error for BadAuthority {}

/// Splits `authority` into its host (IPv6 brackets removed) and its port, if
/// one is written.
pub fn split(authority: &str) -> Result<(&str, Option<u16>), BadAuthority> {
    let bad = || BadAuthority(authority.to_owned());
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        // Brackets hold one address: not nothing, and no second bracket.
        if host.is_empty() || host.contains('[') {
            return Err(bad());
        }
        return match after {
            "" => Ok((host, None)),
            _ => {
                let port = after.strip_prefix(':').ok_or_else(bad)?;
                Ok((host, Some(parse_port(port).ok_or_else(bad)?)))
            }
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        // More than one colon and no brackets: a bare IPv6 address.
        Some((_, rest)) if rest.contains(':') => Ok((authority, None)),
        Some((host, port)) if !host.is_empty() => {
            Ok((host, Some(parse_port(port).ok_or_else(bad)?)))
        }
        Some(_) => Err(bad()),
    }
}

/// The host part of `authority`; an authority that does not parse is taken
/// whole, so that a comparison with it simply fails.
pub fn host(authority: &str) -> &str {
    split(authority).map_or(authority, |(host, _)| host)
}

/// Whether two authorities name the same host, ignoring case and ports.
pub fn same_host(a: &str, b: &str) -> bool {
    host(a.trim().trim_end_matches('/')).eq_ignore_ascii_case(host(b.trim().trim_end_matches('/')))
}

/// `host:port`, with brackets around an IPv6 host.
pub fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `authority` with `default` as its port when it names none.
pub fn with_default_port(authority: &str, default: u16) -> Result<String, BadAuthority> {
    match split(authority)? {
        (_, Some(_)) => Ok(authority.to_owned()),
        (host, None) => Ok(join(host, default)),
    }
}

fn parse_port(port: &str) -> Option<u16> {
    // `u16::from_str` takes a leading '+'; a port is digits only.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_ports() {
        assert_eq!(split("h.example.net"), Ok(("h.example.net", None)));
        assert_eq!(split("localhost:8443"), Ok(("localhost", Some(8443))));
        assert_eq!(split("127.0.0.1:443"), Ok(("127.0.0.1", Some(443))));
        assert_eq!(split("[::1]:8883"), Ok(("::1", Some(8883))));
        assert_eq!(split("[::1]"), Ok(("::1", None)));
        assert_eq!(split("::1"), Ok(("::1", None)));
        assert_eq!(split("fe80::1:2"), Ok(("fe80::1:2", None)));
    }

    #[test]
    fn bad_ports_are_refused() {
        for bad in [
            "h:x",
            "h:",
            ":443",
            "h:+1",
            "h:65536",
            "[::1]8443",
            "[::1",
            "[::1]:",
            // An empty host is no host, bracketed or not (found by fuzzing).
            "[]",
            "[]:11",
            "[[]:0",
            "[[::1]]:443",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
        assert!(BadAuthority("h:x".into()).to_string().contains("'h:x'"));
    }

    #[test]
    fn hosts_compare_without_case_ports_or_brackets() {
        assert!(same_host("localhost", "LOCALHOST:8443"));
        assert!(same_host("dps.example.net:443", "dps.example.net/"));
        assert!(same_host("[::1]:8443", "::1"));
        assert!(!same_host("dps.example.net", "other.example.net"));
        assert!(!same_host("h:x", "h"));
    }

    #[test]
    fn joins_bracket_ipv6_hosts() {
        assert_eq!(join("::1", 8443), "[::1]:8443");
        assert_eq!(join("[::1]", 8443), "[::1]:8443");
        assert_eq!(join("localhost", 8443), "localhost:8443");
        assert_eq!(with_default_port("::1", 8883).unwrap(), "[::1]:8883");
        assert_eq!(with_default_port("h:1", 8883).unwrap(), "h:1");
        assert_eq!(with_default_port("h", 8883).unwrap(), "h:8883");
        assert!(with_default_port("h:x", 8883).is_err());
    }
}
