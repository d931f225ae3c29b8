//! `onramp diagnostics`: the service API's `/diagnostics` (an Onramp
//! extension), newest first, as a table or the entries whole.

use anyhow::{Context, bail};
use onramp_model::UtcTime;
use reqwest::Method;

use super::{Api, enc};
use crate::cli::DiagnosticsArgs;
use crate::output::{Column, Format, Output};

/// What `--output table` shows of an entry.
const COLUMNS: &[Column] = &[
    ("TIME", "/time"),
    ("REGISTRATION ID", "/registrationId"),
    ("PROTOCOL", "/protocol"),
    ("OUTCOME", "/outcome"),
    ("STEP", "/step"),
    ("ERROR", "/errorCode"),
    ("ENROLLMENT", "/enrollment"),
    ("MESSAGE", "/message"),
];

pub async fn diagnostics(args: DiagnosticsArgs, output: Output) -> anyhow::Result<()> {
    let mut query = vec![format!("top={}", args.top)];
    if let Some(device) = &args.device {
        query.push(format!("registrationId={}", enc(device)));
    }
    if let Some(outcome) = &args.outcome {
        query.push(format!("outcome={}", enc(outcome)));
    }
    if let Some(since) = &args.since {
        let since = since_time(since, UtcTime::now())?;
        query.push(format!("since={}", enc(&since.to_string())));
    }
    let api = Api::open(&args.api).await?;
    let answer = api
        .call(
            Method::GET,
            &format!("diagnostics?{}", query.join("&")),
            None,
        )
        .await?;
    let entries = answer
        .as_array()
        .with_context(|| format!("the service answered no list of entries: {answer}"))?;
    output.or(Format::Table).records(entries, COLUMNS)
}

/// `--since`: an RFC 3339 time, or a duration back from `now` (`90s`,
/// `15m`, `1h`, `7d`).
fn since_time(text: &str, now: UtcTime) -> anyhow::Result<UtcTime> {
    let text = text.trim();
    if let Some(time) = UtcTime::parse(text) {
        return Ok(time);
    }
    let (number, unit) = match text.char_indices().last() {
        Some((at, unit)) => (&text[..at], unit),
        None => ("", ' '),
    };
    let unit: i128 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => 0,
    };
    let count = number.parse::<u32>().ok();
    match count {
        Some(count) if unit > 0 => {
            let back = i128::from(count) * unit * 1_000_000_000;
            UtcTime::from_unix_nanos(now.unix_nanos() - back)
                .with_context(|| format!("--since {text} reaches before any time there is"))
        }
        _ => bail!(
            "--since '{text}' is neither a duration (30s, 15m, 1h, 7d) nor an RFC 3339 time \
             (2026-12-05T01:00:00Z)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = UtcTime::parse("2026-12-05T12:00:00Z").unwrap();
        for (text, want) in [
            ("90s", "2026-12-05T11:58:30Z"),
            ("15m", "2026-12-05T11:45:00Z"),
            ("1h", "2026-12-05T11:00:00Z"),
            ("7d", "2026-11-28T12:00:00Z"),
            ("2026-12-05T01:00:00+01:00", "2026-12-05T00:00:00Z"),
        ] {
            assert_eq!(
                since_time(text, now).unwrap(),
                UtcTime::parse(want).unwrap(),
                "{text}"
            );
        }
        for bad in ["1w", "h", "yesterday", "-1h", "", "1é"] {
            let e = since_time(bad, now).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }
}
