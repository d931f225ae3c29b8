//! Twin collections and IoT Hub's merge rules.

use serde_json::{Map, Value};

/// JSON merge patch (RFC 7386), as IoT Hub applies twin PATCHes: objects
/// merge member by member, `null` deletes a member, anything else replaces.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge(existing, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Removes members whose value is `null`, at every depth (a replaced twin
/// never stores nulls).
pub fn without_nulls(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    merge(&mut out, map);
    out
}

/// Drops the `$`-prefixed members a client may echo back (`$version`, `$metadata`).
pub fn strip_system_members(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rules() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]})
            .as_object()
            .unwrap()
            .clone();
        let p = json!({"a": null, "b": {"c": null, "x": 9}, "e": {"k": 1}, "n": "v"});
        merge(&mut t, p.as_object().unwrap());
        assert_eq!(
            Value::Object(t),
            json!({"b": {"d": 3, "x": 9}, "e": {"k": 1}, "n": "v"})
        );
    }
}
