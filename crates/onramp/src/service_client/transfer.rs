//! `onramp enrollment|group export` and `import`: JSON Lines or CSV files,
//! bulk calls of the service API, a progress bar, and a report of the rows
//! the import refused (their line, ID and the service's error).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use onramp_model::ErrorCode;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::api::{Api, ApiError};
use super::records::Records;
use crate::cli::{FileFormatArg, RecordFile};

/// Members the service owns: exported, never imported.
const SERVICE_OWNED: [&str; 4] = [
    "etag",
    "createdDateTimeUtc",
    "lastUpdatedDateTimeUtc",
    "registrationState",
];

/// Key reads in flight while `export --keys` runs.
const KEY_READS_IN_FLIGHT: usize = 16;

/// How a file is read or written: its format and whether to draw progress.
pub(super) struct Transfer {
    format: RecordFile,
    quiet: bool,
}

impl Transfer {
    /// The format given, else the one the file's extension names (`.csv`),
    /// else JSON Lines.
    pub(super) fn new(given: FileFormatArg, file: Option<&Path>, quiet: bool) -> Self {
        let format = given.format.unwrap_or_else(|| {
            match file.and_then(Path::extension).and_then(|e| e.to_str()) {
                Some(ext) if ext.eq_ignore_ascii_case("csv") => RecordFile::Csv,
                _ => RecordFile::Jsonl,
            }
        });
        Self { format, quiet }
    }

    fn bar(&self, len: usize, what: &str) -> indicatif::ProgressBar {
        crate::bench::bar(len as u64, self.quiet, what)
    }
}

/// A record of the file and the line it starts on.
struct Row {
    line: u64,
    record: Value,
}

/// A row the import refused: where, which, and why.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejected {
    line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<u64>,
    message: String,
}

impl Records {
    /// Writes every record to `file` (or standard output).
    pub(super) async fn export(
        self,
        api: &Api,
        file: Option<&Path>,
        keys: bool,
        to: Transfer,
    ) -> anyhow::Result<()> {
        let query = format!("{}/query", self.path());
        let mut records = api.query_all(&query).await?;
        if keys {
            let bar = to.bar(records.len(), "reading keys");
            let reads = records.iter().map(|record| {
                let id = record[self.0.id_field()].as_str().unwrap_or_default();
                let path = format!("{}/attestationmechanism", self.item(id));
                let bar = &bar;
                async move {
                    let attestation = api.call(Method::POST, &path, None).await;
                    bar.inc(1);
                    attestation
                }
            });
            let attestations: Vec<Value> = futures_util::stream::iter(reads)
                .buffered(KEY_READS_IN_FLIGHT)
                .try_collect()
                .await?;
            bar.finish_and_clear();
            for (record, attestation) in records.iter_mut().zip(attestations) {
                record["attestation"] = attestation;
            }
        }
        let text = match to.format {
            RecordFile::Jsonl => records
                .iter()
                .map(|r| serde_json::to_string(r).map(|line| line + "\n"))
                .collect::<Result<String, _>>()?,
            RecordFile::Csv => to_csv(&records, self.0.id_field())?,
        };
        match file {
            // Keys or not, enrollments are the operator's alone.
            Some(path) => onramp_files::write(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?,
            None => crate::output::write_stdout(text.as_bytes())?,
        }
        eprintln!("exported {} {}", records.len(), self.0.collection());
        Ok(())
    }

    /// Creates the records of `file` in bulk calls of `batch`; those that
    /// exist are skipped, those refused are written to `report`.
    pub(super) async fn import(
        self,
        api: &Api,
        file: &Path,
        batch: usize,
        report: &Path,
        from: Transfer,
    ) -> anyhow::Result<()> {
        let (rows, mut rejected) = self.read(file, from.format)?;
        let bar = from.bar(rows.len(), "importing");
        let (mut created, mut existing) = (0usize, 0usize);
        for chunk in rows.chunks(batch) {
            let (made, skipped, refused) = self.create(api, chunk).await?;
            created += made;
            existing += skipped;
            rejected.extend(refused);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        eprintln!(
            "imported {created} {}, skipped {existing} that exist, rejected {}",
            self.0.collection(),
            rejected.len()
        );
        if rejected.is_empty() {
            return Ok(());
        }
        rejected.sort_by_key(|r| r.line);
        let mut lines = String::new();
        for r in &rejected {
            lines.push_str(&serde_json::to_string(r)?);
            lines.push('\n');
        }
        onramp_files::write(report, lines.as_bytes())
            .with_context(|| format!("writing {}", report.display()))?;
        for r in rejected.iter().take(5) {
            eprintln!(
                "  line {}{}: {}",
                r.line,
                r.id.as_ref()
                    .map(|id| format!(" ({id})"))
                    .unwrap_or_default(),
                r.message
            );
        }
        bail!(
            "{} rows were refused; see {} (fix them and import the file again: \
             the records already created are skipped)",
            rejected.len(),
            report.display()
        )
    }

    /// One bulk call creating `chunk`: how many it created, how many
    /// existed, and the rows the service refused. A call refused as a whole
    /// (a record it cannot read) is made again a record at a time, so the
    /// others are still created and the bad rows named.
    async fn create(
        self,
        api: &Api,
        chunk: &[Row],
    ) -> anyhow::Result<(usize, usize, Vec<Rejected>)> {
        match self.bulk_create(api, chunk).await {
            Err(e) if chunk.len() > 1 && refused_whole(&e) => {
                let mut totals = (0, 0, Vec::new());
                for row in chunk {
                    let (made, skipped, refused) =
                        Box::pin(self.create(api, std::slice::from_ref(row))).await?;
                    totals.0 += made;
                    totals.1 += skipped;
                    totals.2.extend(refused);
                }
                Ok(totals)
            }
            Err(e) if refused_whole(&e) => {
                let (code, message) = match e.downcast_ref::<ApiError>() {
                    Some(api) => (api.code.map(u64::from), api.message.clone()),
                    None => (None, e.to_string()),
                };
                Ok((0, 0, vec![self.rejected(&chunk[0], code, message)]))
            }
            other => other,
        }
    }

    async fn bulk_create(
        self,
        api: &Api,
        chunk: &[Row],
    ) -> anyhow::Result<(usize, usize, Vec<Rejected>)> {
        let items: Vec<Value> = chunk.iter().map(|row| importable(&row.record)).collect();
        let body = json!({"mode": "create", self.0.collection(): items});
        let answer = api.call(Method::POST, self.path(), Some(&body)).await?;
        let errors = answer["errors"].as_array().cloned().unwrap_or_default();
        let already = u64::from(ErrorCode::AlreadyExists.code());
        let mut existing = 0;
        let mut refused = Vec::new();
        let mut reported = HashSet::new();
        for error in &errors {
            if error["errorCode"].as_u64() == Some(already) {
                existing += 1;
                continue;
            }
            let id = error[self.0.id_field()].as_str().unwrap_or_default();
            // The row of that ID (the first not reported yet, if it repeats).
            let row = chunk.iter().enumerate().find(|(i, row)| {
                !reported.contains(i)
                    && row.record[self.0.id_field()]
                        .as_str()
                        .is_some_and(|r| r.eq_ignore_ascii_case(id))
            });
            let message = error["errorStatus"]
                .as_str()
                .unwrap_or("refused")
                .to_owned();
            let code = error["errorCode"].as_u64();
            match row {
                Some((i, row)) => {
                    reported.insert(i);
                    refused.push(self.rejected(row, code, message));
                }
                None => refused.push(Rejected {
                    line: 0,
                    id: Some(id.to_owned()),
                    error_code: code,
                    message,
                }),
            }
        }
        Ok((chunk.len() - errors.len(), existing, refused))
    }

    fn rejected(self, row: &Row, error_code: Option<u64>, message: String) -> Rejected {
        Rejected {
            line: row.line,
            id: row.record[self.0.id_field()].as_str().map(str::to_owned),
            error_code,
            message,
        }
    }

    /// The records of `file`, and the rows that are none (not JSON, no ID).
    fn read(self, file: &Path, format: RecordFile) -> anyhow::Result<(Vec<Row>, Vec<Rejected>)> {
        let unreadable = |line, message| Rejected {
            line,
            id: None,
            error_code: None,
            message,
        };
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        match format {
            RecordFile::Jsonl => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                for (n, line) in text.lines().enumerate() {
                    let line_number = n as u64 + 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(line) {
                        Ok(record) => rows.push(Row {
                            line: line_number,
                            record,
                        }),
                        Err(e) => rejected
                            .push(unreadable(line_number, format!("not a JSON record: {e}"))),
                    }
                }
            }
            RecordFile::Csv => {
                let mut reader = csv::Reader::from_path(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let headers = reader
                    .headers()
                    .with_context(|| format!("{}: the header row", file.display()))?
                    .clone();
                for result in reader.records() {
                    match result {
                        Ok(cells) => rows.push(Row {
                            line: cells.position().map_or(0, csv::Position::line),
                            record: from_csv(&headers, &cells),
                        }),
                        Err(e) => {
                            let line = e.position().map_or(0, csv::Position::line);
                            rejected.push(unreadable(line, format!("not a CSV row: {e}")));
                        }
                    }
                }
            }
        }
        let id_field = self.0.id_field();
        let (with_id, without): (Vec<Row>, Vec<Row>) = rows
            .into_iter()
            .partition(|r| r.record[id_field].is_string());
        rejected.extend(without.into_iter().map(|r| {
            unreadable(
                r.line,
                format!("the record has no {id_field}: add it (a text member)"),
            )
        }));
        Ok((with_id, rejected))
    }
}

/// Whether the service refused a bulk call as a whole for what it holds
/// (rather than for who asked or how busy it is).
fn refused_whole(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|e| e.status == 400)
}

/// The record without the members the service owns.
fn importable(record: &Value) -> Value {
    let mut record = record.clone();
    if let Some(members) = record.as_object_mut() {
        for owned in SERVICE_OWNED {
            members.remove(owned);
        }
    }
    record
}

/// A CSV file of `records`: the ID's column first, then a column per
/// member any record has; text as it is, anything else as JSON.
fn to_csv(records: &[Value], id_field: &str) -> anyhow::Result<String> {
    let mut columns = vec![id_field.to_owned()];
    let mut seen: HashSet<String> = columns.iter().cloned().collect();
    for member in records
        .iter()
        .filter_map(Value::as_object)
        .flat_map(Map::keys)
    {
        if seen.insert(member.clone()) {
            columns.push(member.clone());
        }
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&columns)?;
    for record in records {
        writer.write_record(columns.iter().map(|c| match record.get(c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        }))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing CSV: {}", e.error()))?;
    Ok(String::from_utf8(bytes)?)
}

/// A record from a CSV row: an empty cell is an absent member; a cell that
/// holds a JSON object or array is that (IDs and the other text members
/// never start with `{` or `[`); anything else is text.
fn from_csv(headers: &csv::StringRecord, cells: &csv::StringRecord) -> Value {
    let mut record = Map::new();
    for (name, cell) in headers.iter().zip(cells.iter()) {
        if cell.is_empty() {
            continue;
        }
        let value = if cell.starts_with('{') || cell.starts_with('[') {
            serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.to_owned()))
        } else {
            Value::String(cell.to_owned())
        };
        record.insert(name.to_owned(), value);
    }
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{from_csv, to_csv};

    #[test]
    fn csv_carries_every_member_of_every_record() {
        let records = vec![
            json!({
                "registrationId": "dev-1",
                "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "a2V5"}},
                "initialTwin": {"tags": {"line": "7, \"north\""}},
                "iotHubs": ["a.example", "b.example"],
                "provisioningStatus": "enabled",
            }),
            json!({"registrationId": "dev-2", "deviceId": "device two", "attestation": {"type": "tpm"}}),
        ];
        let text = to_csv(&records, "registrationId").unwrap();
        assert!(text.starts_with("registrationId,"), "{text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().unwrap().clone();
        let back: Vec<_> = reader
            .records()
            .map(|r| from_csv(&headers, &r.unwrap()))
            .collect();
        assert_eq!(back, records);
    }
}
