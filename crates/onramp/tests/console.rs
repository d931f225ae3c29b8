//! The web console: served at `/` to browsers without disturbing the API
//! routes there, its extension routes (`/service`, `/linkedHubs`), and the
//! whole console driven in Debian's headless chromium by Playwright
//! (tests/console/console.mjs).

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, assert_error, assert_message_says, interop_dir, missing};
use serde_json::Value;

#[tokio::test]
async fn the_page_goes_to_browsers_and_the_api_keeps_its_routes() {
    let server = Server::start("127.0.0.1:0");
    let root = |accept: &'static str| {
        server
            .http()
            .get(server.url("/"))
            .header("accept", accept)
            .send()
    };
    let page = root("text/html,application/xhtml+xml,*/*;q=0.8")
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/app.js"), "{html}");
    assert!(!html.contains("<script>"), "no inline script: {html}");

    // An API client asking for JSON at / gets what it got before (not the page).
    let api = root("application/json").await.unwrap();
    assert!(
        !api.headers()
            .get("content-type")
            .is_some_and(|t| t.to_str().unwrap().starts_with("text/html")),
        "{:?}",
        api.headers()
    );
    // Azure's routes are untouched.
    let cs = server.owner_connection_string().await;
    let (status, _) = server
        .get(&cs, "/enrollments/nobody?api-version=2021-10-01")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_extension_routes_need_a_token_and_the_right() {
    let server = Server::start("127.0.0.1:0");
    let cs = server.owner_connection_string().await;
    let (status, service) = server.get(&cs, "/service?api-version=2021-10-01").await;
    assert_eq!(status, 200, "{service}");
    assert_eq!(service["idScope"], server.id_scope().as_str());
    assert_eq!(service["policy"], "provisioningserviceowner");
    assert_eq!(service["linkedHubs"], 1);
    assert!(
        service["rights"]
            .as_str()
            .unwrap()
            .contains("ServiceConfig")
    );
    assert!(service.get("customAllocation").is_none(), "{service}");

    let (status, hubs) = server.get(&cs, "/linkedHubs?api-version=2021-10-01").await;
    assert_eq!(status, 200, "{hubs}");
    let hub = &hubs[0];
    assert_eq!(hub["kind"], "embedded", "{hubs}");
    assert_eq!(hub["devices"], 0);
    assert!(hub.get("connectionString").is_none(), "{hubs}");
    assert!(hub["latency"].is_array(), "{hubs}");

    // Without a token, and with a policy that lacks ServiceConfig.
    let anonymous = server
        .http()
        .get(server.url("/linkedHubs?api-version=2021-10-01"));
    assert_eq!(common::status(anonymous).await, 401);
    let reader = server
        .cli_ok(&["policy", "create", "reader", "--rights", "EnrollmentRead"])
        .trim()
        .to_owned();
    let (status, refused) = server
        .get(&reader, "/linkedHubs?api-version=2021-10-01")
        .await;
    assert_error(status, &refused, 403, 403001);
    assert_message_says(&refused, "ServiceConfig");
    let (status, summary) = server.get(&reader, "/service?api-version=2021-10-01").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["rights"], "EnrollmentRead");
}

/// The live charts' arithmetic (tests/console/charts.test.mjs under `node --test`).
#[test]
fn the_charts_count_each_second() {
    let Some(dir) = interop_dir("tests/console", "charts.test.mjs", "the chart tests") else {
        return;
    };
    common::succeeded(
        &Command::new("node")
            .args(["--test", "charts.test.mjs"])
            .current_dir(&dir)
            .output()
            .unwrap(),
    );
}

/// The console in a real browser. Screenshots go to docs/console when
/// `ONRAMP_CONSOLE_SCREENSHOTS=docs` (to refresh the README's), else to a
/// temporary folder.
#[tokio::test]
async fn the_console_in_a_browser() {
    let Some(dir) = interop_dir(
        "tests/console",
        "node_modules/playwright-core/package.json",
        "playwright-core for the console test (npm ci --prefix tests/console)",
    ) else {
        return;
    };
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing(&format!("chromium ({chromium})"));
        return;
    }
    let server = Server::start("127.0.0.1:0");
    let work = tempfile::tempdir().unwrap();
    let shots: PathBuf = match std::env::var("ONRAMP_CONSOLE_SCREENSHOTS").as_deref() {
        Ok("docs") => dir.join("../../docs/console"),
        _ => work.path().join("screenshots"),
    };
    let cs = server.owner_connection_string().await;
    let mut child = Command::new("node")
        .arg(dir.join("console.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", server.url("/"))
        .env("CONNECTION_STRING", &cs)
        .env("ONRAMP_BIN", env!("CARGO_BIN_EXE_onramp"))
        .env("ONRAMP_DATA_DIR", &server.data_dir)
        .env("CONSOLE_WORK_DIR", work.path())
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .env_remove("ONRAMP_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a console that hangs fails the test instead of holding CI.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("PASS"),
        "the console script failed ({status:?}):\n{stdout}\n{stderr}\nserver log:\n{}",
        server.stderr()
    );
    for view in [
        "signin",
        "groups",
        "registrations",
        "hubs",
        "overview",
        "certificates",
    ] {
        assert!(shots.join(format!("{view}.png")).exists(), "{view}.png");
    }
    // The device the browser saw provisioned is on the hub.
    let cs_value: Value = server
        .get(&cs, "/registrations/sensor-1?api-version=2021-10-01")
        .await
        .1;
    assert_eq!(cs_value["status"], "assigned", "{cs_value}");
}
