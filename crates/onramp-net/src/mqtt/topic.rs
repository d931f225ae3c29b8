//! Topics with property bags, as DPS and IoT Hub use them:
//! `$dps/registrations/res/202/?$rid=1&retry-after=3`.

use percent_encoding::percent_decode_str;

/// Splits `prefix?a=1&b=2` into the part before `?` and its decoded pairs.
pub fn split(topic: &str) -> (&str, Vec<(String, String)>) {
    match topic.split_once('?') {
        None => (topic, Vec::new()),
        Some((path, query)) => (path, pairs(query)),
    }
}

/// `a=1&b=2` into decoded pairs; a part without `=` has an empty value.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The value of `name` among `pairs`.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The raw (undecoded) `$rid` value, to echo back verbatim.
pub fn raw_rid(topic: &str) -> Option<&str> {
    let query = topic.split_once('?')?.1;
    query.split('&').find_map(|p| p.strip_prefix("$rid="))
}

/// Whether `topic` matches the subscription `filter` (MQTT 3.1.1 §4.7):
/// `+` stands for one level, a final `#` for any number (also none), and a
/// wildcard at the first level does not match a topic that starts with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (p, Some(level)) if p == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_bags() {
        let (path, p) =
            split("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=1.a%2Eb");
        assert_eq!(path, "$dps/registrations/GET/iotdps-get-operationstatus/");
        assert_eq!(get(&p, "$rid"), Some("7"));
        assert_eq!(get(&p, "operationId"), Some("1.a.b"));
        assert_eq!(raw_rid("x/?$rid=ab%2Dc&y=1"), Some("ab%2Dc"));
        assert_eq!(raw_rid("x/"), None);
    }
}

#[cfg(test)]
mod match_tests {
    use super::matches;

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic) in [
            (
                "$dps/registrations/res/#",
                "$dps/registrations/res/202/?$rid=1",
            ),
            ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=4"),
            (
                "devices/d1/messages/devicebound/#",
                "devices/d1/messages/devicebound/%24.to=x",
            ),
            ("a/#", "a"),
            ("a/+/c", "a/b/c"),
            ("#", "a/b"),
            ("a/b", "a/b"),
        ] {
            assert!(matches(filter, topic), "{filter} {topic}");
        }
        for (filter, topic) in [
            ("$dps/registrations/res/#", "$iothub/twin/res/200/?$rid=4"),
            ("#", "$dps/registrations/res/202/?$rid=1"),
            (
                "+/registrations/res/#",
                "$dps/registrations/res/202/?$rid=1",
            ),
            ("a/+", "a/b/c"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
        ] {
            assert!(!matches(filter, topic), "{filter} {topic}");
        }
    }
}
