//! How commands print records: one `--output table|json|yaml` switch for
//! every command. A command picks its default format (the service API's
//! records default to JSON, the deployment's lists to a table) and hands
//! its rows to [`Format::list`] or its record to [`Format::one`].

use std::fmt;
use std::io::Write;

use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The formats `--output` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// JSON, as the service API speaks it.
    Json,
    /// YAML.
    Yaml,
}

/// The `--output` of a command line, when given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output(pub Option<Format>);

impl Output {
    /// The format asked for, else the command's `default`.
    pub fn or(self, default: Format) -> Format {
        self.0.unwrap_or(default)
    }

    /// A command's own `--json` flag, kept as another way to say `--output json`.
    pub fn or_json(self, json: bool) -> Self {
        if json { Self(Some(Format::Json)) } else { self }
    }
}

/// A column of a table of JSON records: its header and the JSON pointer
/// of the member it shows (e.g. `("ATTESTATION", "/attestation/type")`).
pub type Column = (&'static str, &'static str);

impl Format {
    /// Prints rows: a table with a column per member (in the order the
    /// first row serializes them), a JSON array, or a YAML sequence.
    pub fn list<T: Serialize>(self, rows: &[T]) -> anyhow::Result<()> {
        write_stdout(self.render_list(rows)?.as_bytes())
    }

    /// Prints one record: in a table, a row per member (nested members by
    /// their dotted path).
    pub fn one<T: Serialize>(self, record: &T) -> anyhow::Result<()> {
        write_stdout(self.render_one(record)?.as_bytes())
    }

    /// Prints JSON records whole as JSON or YAML, or as a table of the
    /// members `columns` picks.
    pub fn records(self, records: &[Value], columns: &[Column]) -> anyhow::Result<()> {
        if self != Format::Table {
            return self.list(records);
        }
        write_stdout(self.render_records(records, columns).as_bytes())
    }

    fn render_records(self, records: &[Value], columns: &[Column]) -> String {
        let rows = records.iter().map(|r| {
            columns
                .iter()
                .map(|(_, pointer)| cell(r.pointer(pointer).unwrap_or(&Value::Null)))
                .collect()
        });
        let headers = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        table(headers, rows)
    }

    pub fn render_list<T: Serialize>(self, rows: &[T]) -> anyhow::Result<String> {
        match self {
            Format::Json => Ok(format!("{}\n", serde_json::to_string_pretty(rows)?)),
            Format::Yaml => yaml(&rows),
            Format::Table => {
                let rows = rows
                    .iter()
                    .map(members)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut headers: Vec<String> = Vec::new();
                for row in &rows {
                    for (name, _) in row {
                        if !headers.contains(name) {
                            headers.push(name.clone());
                        }
                    }
                }
                let cells = rows.iter().map(|row| {
                    headers
                        .iter()
                        .map(|h| {
                            row.iter()
                                .find(|(n, _)| n == h)
                                .map_or(String::new(), |(_, v)| cell(v))
                        })
                        .collect()
                });
                let headers = headers.iter().map(|h| header(h)).collect();
                Ok(table(headers, cells))
            }
        }
    }

    pub fn render_one<T: Serialize>(self, record: &T) -> anyhow::Result<String> {
        match self {
            Format::Json => Ok(format!("{}\n", serde_json::to_string_pretty(record)?)),
            Format::Yaml => yaml(record),
            Format::Table => {
                let mut rows = Vec::new();
                for (name, value) in members(record)? {
                    flatten(&name, &value, &mut rows);
                }
                Ok(table(Vec::new(), rows.into_iter().map(|(k, v)| vec![k, v])))
            }
        }
    }
}

fn yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!("cannot write YAML: {e}"))
}

/// An aligned table without borders; no header row when `headers` is empty.
fn table(headers: Vec<String>, rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if !headers.is_empty() {
        table.set_header(headers);
    }
    table.add_rows(rows);
    if table.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = table
        .lines()
        // The style pads each cell with a space; columns stay aligned without the first.
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_owned())
        .collect();
    format!("{}\n", lines.join("\n"))
}

/// `registrationId` → `REGISTRATION ID`.
fn header(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// A value in a cell: text as it is (its control characters escaped: a
/// registration ID or message came from a device, and a table goes to a
/// terminal), a list of texts joined, anything nested as compact JSON,
/// nothing for null.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if s.chars().any(char::is_control) => s
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// The rows of one record's table: nested objects by their dotted path.
fn flatten(path: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(members) if !members.is_empty() => {
            for (name, v) in members {
                flatten(&format!("{path}.{name}"), v, rows);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), v, rows);
            }
        }
        Value::Null => {}
        other => rows.push((path.to_owned(), cell(other))),
    }
}

/// The members of a serialized record in the order it writes them (a
/// `serde_json::Value` would sort them); a value that is not an object is
/// one member named `value`.
fn members<T: Serialize + ?Sized>(record: &T) -> anyhow::Result<Vec<(String, Value)>> {
    let text = serde_json::to_string(record)?;
    Ok(serde_json::from_str::<Members>(&text)?.0)
}

struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InOrder)
    }
}

/// Reads an object's members in order; anything else as one `value`.
struct InOrder;

impl InOrder {
    fn value<E>(value: Value) -> Result<Members, E> {
        Ok(Members(vec![("value".to_owned(), value)]))
    }
}

impl<'de> Visitor<'de> for InOrder {
    type Value = Members;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
        let mut members = Vec::new();
        while let Some(entry) = map.next_entry::<String, Value>()? {
            members.push(entry);
        }
        Ok(Members(members))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Members, E> {
        Self::value(Value::String(v.to_owned()))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Members, E> {
        Self::value(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Members, E> {
        Self::value(v.into())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Members, E> {
        Self::value(v.into())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Members, E> {
        Self::value(v.into())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Members, E> {
        Self::value(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Members, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Self::value(Value::Array(items))
    }
}

/// Writes to standard output; a reader that stops early (`| head`) is not
/// an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::json;

    use super::{Format, cell};

    #[test]
    fn a_cell_escapes_control_characters_and_keeps_the_rest() {
        assert_eq!(
            cell(&json!("enrollment 'x' is disabled")),
            "enrollment 'x' is disabled"
        );
        assert_eq!(cell(&json!("a\u{1b}[2Jb\n")), "a\\u{1b}[2Jb\\u{a}");
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Row {
        registration_id: &'static str,
        status: &'static str,
        hubs: Vec<&'static str>,
        error: Option<&'static str>,
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                registration_id: "dev-1",
                status: "assigned",
                hubs: vec!["a.example", "b.example"],
                error: None,
            },
            Row {
                registration_id: "a-longer-device",
                status: "failed",
                hubs: vec![],
                error: Some("no hub"),
            },
        ]
    }

    #[test]
    fn a_table_has_a_column_per_member_in_the_order_the_row_declares_them() {
        let table = Format::Table.render_list(&rows()).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("REGISTRATION ID") && lines[0].ends_with("ERROR"),
            "{table}"
        );
        // Aligned: each column starts at the same offset on every line.
        let at = |line: &str, text: &str| line.find(text).unwrap();
        assert_eq!(at(lines[0], "STATUS"), at(lines[1], "assigned"), "{table}");
        assert_eq!(at(lines[0], "STATUS"), at(lines[2], "failed"), "{table}");
        assert!(lines[1].contains("a.example, b.example"), "{table}");
        assert!(lines[2].ends_with("no hub"), "{table}");
        assert!(table.lines().all(|l| l == l.trim_end()), "{table}");
    }

    #[test]
    fn json_and_yaml_carry_the_rows_whole() {
        let json: serde_json::Value =
            serde_json::from_str(&Format::Json.render_list(&rows()).unwrap()).unwrap();
        assert_eq!(json[1]["registrationId"], "a-longer-device");
        assert_eq!(json[0]["error"], serde_json::Value::Null);
        let yaml = Format::Yaml.render_list(&rows()).unwrap();
        assert!(yaml.contains("- registrationId: dev-1"), "{yaml}");
        assert!(yaml.contains("status: failed"), "{yaml}");
        let one = Format::Yaml.render_one(&json!({"a": {"b": 1}})).unwrap();
        assert!(one.contains("a:\n  b: 1"), "{one}");
    }

    #[test]
    fn one_record_is_a_table_of_its_members_by_dotted_path() {
        let record = json!({
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey", "symmetricKey": {}},
            "iotHubs": ["a", "b"],
            "policies": [{"name": "owner"}],
            "deviceId": null,
        });
        let table = Format::Table.render_one(&record).unwrap();
        for line in [
            "attestation.type",
            "iotHubs",
            "policies[0].name",
            "registrationId",
        ] {
            assert!(
                table.lines().any(|l| l.starts_with(line)),
                "{line}: {table}"
            );
        }
        assert!(
            !table.contains("deviceId"),
            "null members are left out: {table}"
        );
        assert!(table.contains("a, b"), "{table}");
    }

    #[test]
    fn records_show_the_chosen_columns_in_a_table_and_everything_otherwise() {
        let records = vec![json!({"registrationId": "x", "attestation": {"type": "tpm"}})];
        let columns = &[
            ("ID", "/registrationId"),
            ("ATTESTATION", "/attestation/type"),
        ];
        let table = Format::Table.render_records(&records, columns);
        assert_eq!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["x", "tpm"]
        );
        assert_eq!(Format::Table.render_list::<Row>(&[]).unwrap(), "");
    }
}
