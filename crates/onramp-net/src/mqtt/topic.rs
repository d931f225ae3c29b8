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
