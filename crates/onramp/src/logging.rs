//! Logging for `onramp serve` and `onramp hub serve`: text or JSON on stderr.
//!
//! Log records carry what clients chose (MQTT client IDs, registration IDs,
//! paths, error messages that quote them). In the text format every field
//! value and message goes through [`EscapingFields`], so a client cannot end
//! a line to forge the next one or send terminal escape sequences; the JSON
//! format is escaped by serde already. Colours only reach a terminal.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// The log output's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Installs the process's subscriber: `filter` (e.g. `info,onramp=debug`)
/// in `format`, on stderr.
pub fn init(format: Format, filter: &str) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| anyhow::anyhow!("log filter '{filter}': {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk, a closed
        // pipe) is dropped: reporting it would print to the same stderr,
        // whose failure panics the task that logged.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        Format::Json => builder.json().try_init(),
        Format::Text => builder.fmt_fields(EscapingFields).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

/// Formats fields as the default formatter does (`name=value` separated by
/// spaces, the message bare, text fields quoted), with every value written
/// through [`Escaped`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", Escaped(value))
        } else {
            write!(
                self.writer,
                "{separator}{}={}",
                field.name(),
                Escaped(value)
            )
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            // Quoted, as the default formatter writes text fields.
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// Writes text with every character that could end a line or steer a
/// terminal escaped: control characters (C0, DEL, C1) as `\n`, `\r`, `\t`
/// or `\u{1b}`, and Unicode line separators and bidirectional overrides.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if needs_escape(c) {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_line_separators_are_escaped() {
        let hostile =
            "dev\n2099-01-01T00:00:00Z  INFO forged\r\x1b[31mred\u{9b}\u{2028}\u{202e}ok ü";
        let out = Escaped(hostile).to_string();
        assert_eq!(
            out,
            "dev\\n2099-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31mred\\u{9b}\\u{2028}\\u{202e}ok ü"
        );
        assert!(!out.chars().any(needs_escape));
    }

    #[test]
    fn text_records_escape_messages_and_every_field() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .fmt_fields(EscapingFields)
            .finish();
        let hostile = "x\nFORGED line\x1b[31m";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", peer = %hostile);
            let _entered = span.enter();
            tracing::info!(client_id = %hostile, debug = ?hostile, text = hostile, "refused {hostile}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("refused x\\nFORGED line\\u{1b}[31m"),
            "{text}"
        );
        assert!(text.contains("client_id=x\\nFORGED"), "{text}");
        assert!(text.contains("text=\"x\\nFORGED"), "{text}");
        assert!(text.contains("peer=x\\nFORGED"), "{text}");
    }
}
