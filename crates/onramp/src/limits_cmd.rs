//! `onramp limits`: the limits a server runs with (`[limits]`,
//! `[throttle]` and the companion hub's in `[hub]` of its configuration) and, while it runs, how much of each
//! is in use and how often each refused, read from its metrics listener.

use serde::Serialize;

use crate::cli::Location;
use crate::config::Config;
use crate::local::ServeState;
use crate::output::{Format, Output};

/// One limit: its setting, its value, and what the running server says of it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    setting: String,
    /// 0 is off for the caps and rates.
    value: u64,
    unit: &'static str,
    /// How much is in use now, for the limits with a level.
    #[serde(skip_serializing_if = "Option::is_none")]
    in_use: Option<f64>,
    /// Requests or connections it refused since the server started.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<f64>,
}

/// The series of `/metrics` a limit's usage and refusals are read from.
struct Source {
    in_use: Option<&'static str>,
    refused: Option<&'static str>,
}

const NONE: Source = Source {
    in_use: None,
    refused: None,
};

fn refused_by(series: &'static str) -> Source {
    Source {
        in_use: None,
        refused: Some(series),
    }
}

fn rows(config: &Config) -> Vec<(&'static str, u64, &'static str, Source)> {
    let l = &config.limits;
    let t = &config.throttle;
    let h = &config.hub;
    let mut rows = vec![
        (
            "limits.max_connections",
            l.max_connections as u64,
            "connections (less the open-file limit's reserve)",
            Source {
                in_use: Some("onramp_connections_open"),
                refused: Some(r#"onramp_connections_refused_total{reason="global"}"#),
            },
        ),
        (
            "limits.max_connections_per_address",
            l.max_connections_per_address as u64,
            "connections per client address",
            refused_by(r#"onramp_connections_refused_total{reason="address-connections"}"#),
        ),
        (
            "limits.handshakes_per_second_per_address",
            u64::from(l.handshakes_per_second_per_address),
            "handshakes a second per client address",
            refused_by(r#"onramp_connections_refused_total{reason="address-handshakes"}"#),
        ),
        (
            "limits.max_registrations_in_flight",
            l.max_registrations_in_flight as u64,
            "registrations at once",
            Source {
                in_use: Some("onramp_registrations_in_flight"),
                refused: Some("onramp_registrations_shed_total"),
            },
        ),
        (
            "limits.handshake_timeout_ms",
            l.handshake_timeout_ms,
            "ms",
            NONE,
        ),
        ("limits.header_timeout_ms", l.header_timeout_ms, "ms", NONE),
        ("limits.body_timeout_ms", l.body_timeout_ms, "ms", NONE),
        (
            "limits.max_body_bytes",
            l.max_body_bytes as u64,
            "bytes",
            NONE,
        ),
    ];
    // The token buckets, one a line: (setting, value, unit, refusals).
    #[rustfmt::skip]
    let throttles: [(&str, u32, &str, &str); 6] = [
        ("throttle.registrations_per_second", t.registrations_per_second, "registrations a second per service", r#"onramp_throttled_total{limit="service"}"#),
        ("throttle.device_registrations_per_minute", t.device_registrations_per_minute, "registrations a minute per device", r#"onramp_throttled_total{limit="device"}"#),
        ("throttle.failed_authentications_per_minute", t.failed_authentications_per_minute, "failed authentications a minute per address", r#"onramp_throttled_total{limit="address"}"#),
        ("throttle.failed_authentications_per_registration_per_minute", t.failed_authentications_per_registration_per_minute, "failed authentications a minute per registration ID (then delayed)", r#"onramp_throttled_total{limit="registration-failures"}"#),
        ("throttle.failed_authentications_per_policy_per_minute", t.failed_authentications_per_policy_per_minute, "failed authentications a minute per policy (then delayed)", r#"onramp_throttled_total{limit="policy-failures"}"#),
        ("throttle.service_api_requests_per_minute", t.service_api_requests_per_minute, "service API requests a minute per service", r#"onramp_throttled_total{limit="service-api"}"#),
    ];
    rows.extend(throttles.map(|(setting, value, unit, refused)| {
        (setting, u64::from(value), unit, refused_by(refused))
    }));
    rows.push((
        "throttle.failed_authentication_delay_max_ms",
        t.failed_authentication_delay_max_ms,
        "ms a delayed failure answer waits at most",
        NONE,
    ));
    // The companion hub's, one a line: (setting, value, unit, refusals).
    let too_large = r#"onramp_hub_messages_refused_total{reason="too-large"}"#;
    let over_rate = r#"onramp_throttled_total{limit="hub-messages"}"#;
    let dropped = "onramp_hub_messages_dropped_total";
    #[rustfmt::skip]
    let hub: [(&str, u64, &str, Option<&str>); 4] = [
        ("hub.max_message_bytes", h.max_message_bytes as u64, "bytes a message", Some(too_large)),
        ("hub.device_messages_per_second", h.device_messages_per_second.into(), "messages a second per device", Some(over_rate)),
        ("hub.retained_messages_per_device", h.retained_messages_per_device, "messages kept per device (refused: dropped)", Some(dropped)),
        ("hub.retained_message_age_seconds", h.retained_message_age_seconds, "seconds a message is kept", None),
    ];
    rows.extend(hub.map(|(setting, value, unit, refused)| {
        (setting, value, unit, refused.map_or(NONE, refused_by))
    }));
    rows
}

/// A row per rate of each `[throttle.services.NAME]` table: what that
/// service is held to (its refusals count with the shared rate's).
fn service_rows(config: &Config) -> Vec<Row> {
    let engine = config.throttle.engine();
    let rate = |n: Option<std::num::NonZeroU32>| n.map_or(0, |n| u64::from(n.get()));
    config
        .throttle
        .services
        .keys()
        .flat_map(|name| {
            let own = engine.rates_of(name);
            [
                (
                    "registrations_per_second",
                    rate(own.registrations_per_second),
                    "registrations a second of this service",
                ),
                (
                    "service_api_requests_per_minute",
                    rate(own.service_api_requests_per_minute),
                    "service API requests a minute of this service",
                ),
            ]
            .map(|(key, value, unit)| Row {
                setting: format!("throttle.services.{name}.{key}"),
                value,
                unit,
                in_use: None,
                refused: None,
            })
        })
        .collect()
}

/// The value of the sample `series` (name and labels, as rendered).
fn value_of(scraped: &str, series: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The running server's metrics, or why there are none.
async fn scrape(config: &Config) -> Result<String, String> {
    let Some(state) = ServeState::read(config) else {
        return Err("no server runs on this data directory".into());
    };
    let Some(listen) = state.deployment.metrics_listen else {
        return Err("the server runs without a metrics listener".into());
    };
    let url = format!("http://{listen}/metrics");
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("{url}: {e}"))?;
    answer.text().await.map_err(|e| format!("{url}: {e}"))
}

pub async fn run(location: &Location, output: Output) -> anyhow::Result<()> {
    let config = Config::load(location)?;
    let scraped = scrape(&config).await;
    let mut rows: Vec<Row> = rows(&config)
        .into_iter()
        .map(|(setting, value, unit, source)| {
            let read = |series: Option<&str>| {
                let scraped = scraped.as_ref().ok()?;
                value_of(scraped, series?)
            };
            Row {
                setting: setting.to_owned(),
                value,
                unit,
                in_use: read(source.in_use),
                refused: read(source.refused),
            }
        })
        .collect();
    rows.extend(service_rows(&config));
    match output.or(Format::Table) {
        Format::Table => {}
        format => return format.list(&rows),
    }
    let width = rows.iter().map(|r| r.setting.len()).fold(44, usize::max);
    println!(
        "{:<width$} {:>8}  {:>8}  {:>9}  unit",
        "limit", "value", "in use", "refused"
    );
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for row in &rows {
        // A cap or rate of 0 is none; a deadline or size is a number.
        let value = match (row.value, row.unit) {
            (0, u) if !matches!(u, "ms" | "bytes") => "off".to_owned(),
            (v, _) => v.to_string(),
        };
        println!(
            "{:<width$} {:>8}  {:>8}  {:>9}  {}",
            row.setting,
            value,
            shown(row.in_use),
            shown(row.refused),
            row.unit
        );
    }
    if let Err(why) = scraped {
        println!("(no usage: {why})");
    }
    Ok(())
}
