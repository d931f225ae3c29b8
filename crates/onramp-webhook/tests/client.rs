//! The webhook client against a scriptable HTTP server on loopback: each
//! way a webhook can fail, the one retry of a lost connection, and the
//! retries of a busy webhook.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use onramp_core::ports::{AllocationWebhook, WebhookError, WebhookTarget};
use onramp_model::allocation::{AllocationRequest, AllocationResponse, DeviceRuntimeContext};
use onramp_webhook::{Retries, WebhookClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
enum Behaviour {
    Answer(u16, &'static str),
    Hang,
    CloseAtOnce,
    Huge,
}

/// Serves connection `n` with `script[n]` (the last entry repeats).
async fn webhook(
    script: Vec<Behaviour>,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/allocate?code=s3cret",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, got) = (seen.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let behaviour = script[n.min(script.len() - 1)];
            let got = got.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut sock).await else {
                    return;
                };
                got.lock().unwrap().push(request);
                match behaviour {
                    Behaviour::Answer(status, body) => {
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(body.as_bytes()).await;
                    }
                    Behaviour::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    Behaviour::CloseAtOnce => drop(sock),
                    Behaviour::Huge => {
                        let body = vec![b' '; 1024 * 1024];
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                }
            });
        }
    });
    (url, seen, bodies)
}

async fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

/// Busy webhooks are asked again twice, after 50 ms and then 100 ms.
const FAST: Retries = Retries {
    retries: 2,
    first: Duration::from_millis(50),
    increment: Duration::from_millis(50),
};

fn client(timeout_ms: u64) -> WebhookClient {
    WebhookClient::new(
        onramp_net::tls::client_config(None).unwrap(),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
    .with_retries(FAST)
}

fn target(url: &str) -> WebhookTarget {
    WebhookTarget {
        url: url.into(),
        api_version: "2021-10-01".into(),
    }
}

fn request() -> AllocationRequest {
    AllocationRequest {
        individual_enrollment: None,
        enrollment_group: None,
        device_runtime_context: DeviceRuntimeContext {
            registration_id: "toaster-7".into(),
            payload: Some(serde_json::json!({"model": "toaster"})),
            ..Default::default()
        },
        linked_hubs: vec!["hub-a.example.net".into()],
    }
}

const HUB_A: &str = "hub-a.example.net";
/// A webhook's answer that chooses hub A.
const HUB_A_ANSWER: &str = r#"{"iotHubHostName":"hub-a.example.net"}"#;

/// The client with a `timeout_ms` timeout asks the webhook at `url`.
async fn allocate(url: &str, timeout_ms: u64) -> Result<AllocationResponse, WebhookError> {
    client(timeout_ms).allocate(&target(url), &request()).await
}

#[tokio::test]
async fn posts_the_request_as_json_and_reads_the_answer() {
    let (url, seen, bodies) = webhook(vec![Behaviour::Answer(
        200,
        r#"{"iotHubHostName":"hub-a.example.net","payload":{"hello":1}}"#,
    )])
    .await;
    let answer = allocate(&url, 2000).await.unwrap();
    assert_eq!(answer.iot_hub_host_name.as_deref(), Some(HUB_A));
    assert_eq!(answer.payload, Some(serde_json::json!({"hello": 1})));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let sent = bodies.lock().unwrap()[0].clone();
    assert!(
        sent.starts_with("POST /api/allocate?code=s3cret HTTP/1.1"),
        "{sent}"
    );
    assert!(
        sent.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{sent}"
    );
    assert!(sent.contains(r#""registrationId":"toaster-7""#), "{sent}");
    assert!(sent.contains(r#""payload":{"model":"toaster"}"#), "{sent}");
}

#[tokio::test]
async fn a_hanging_webhook_times_out() {
    let (url, _, bodies) = webhook(vec![Behaviour::Hang]).await;
    let started = Instant::now();
    let err = allocate(&url, 300).await.unwrap_err();
    assert_eq!(err, WebhookError::Timeout(300));
    // The request reached the webhook, and the client waited the whole timeout.
    assert_eq!(bodies.lock().unwrap().len(), 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn an_error_status_is_reported_with_the_start_of_its_body() {
    let (url, seen, _) = webhook(vec![Behaviour::Answer(
        400,
        "Unrecognized device\nregistration",
    )])
    .await;
    let err = allocate(&url, 2000).await.unwrap_err();
    assert_eq!(
        err,
        WebhookError::Status {
            status: 400,
            body: "Unrecognized device registration".into()
        }
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "a refusal is not retried");
    // Only a 200 carries an allocation.
    let (url, _, _) = webhook(vec![Behaviour::Answer(201, HUB_A_ANSWER)]).await;
    let err = allocate(&url, 2000).await.unwrap_err();
    assert!(
        matches!(err, WebhookError::Status { status: 201, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_busy_webhook_is_asked_again_on_the_schedule() {
    // 503, then 429, then an answer: two waits of 50 and 100 ms.
    let (url, seen, _) = webhook(vec![
        Behaviour::Answer(503, "warming up"),
        Behaviour::Answer(429, "too many"),
        Behaviour::Answer(200, HUB_A_ANSWER),
    ])
    .await;
    let started = Instant::now();
    let answer = allocate(&url, 2000).await.unwrap();
    assert_eq!(answer.iot_hub_host_name.as_deref(), Some(HUB_A));
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Still busy after the last retry: the last status is the error.
    let (url, seen, _) = webhook(vec![Behaviour::Answer(500, "crashed")]).await;
    let err = allocate(&url, 2000).await.unwrap_err();
    assert!(
        matches!(err, WebhookError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 3, "one call and two retries");
}

#[tokio::test]
async fn a_non_json_answer_is_an_invalid_response() {
    let (url, _, _) = webhook(vec![Behaviour::Answer(200, "<html>oops</html>")]).await;
    let err = allocate(&url, 2000).await.unwrap_err();
    let WebhookError::InvalidResponse(m) = err else {
        panic!("{err:?}")
    };
    assert!(m.contains("<html>oops</html>"), "{m}");
    let (url, _, _) = webhook(vec![Behaviour::Huge]).await;
    let err = allocate(&url, 5000).await.unwrap_err();
    assert!(matches!(err, WebhookError::InvalidResponse(m) if m.contains("larger than")));
}

#[tokio::test]
async fn a_closed_connection_is_retried_once() {
    let (url, seen, _) = webhook(vec![
        Behaviour::CloseAtOnce,
        Behaviour::Answer(200, HUB_A_ANSWER),
    ])
    .await;
    let answer = allocate(&url, 2000).await.unwrap();
    assert_eq!(answer.iot_hub_host_name.as_deref(), Some(HUB_A));
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    let (url, seen, _) = webhook(vec![Behaviour::CloseAtOnce]).await;
    let err = allocate(&url, 2000).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unreachable(_)), "{err:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "exactly one retry");
}

#[tokio::test]
async fn nobody_listening_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client(2000)
        .allocate(&target(&format!("http://127.0.0.1:{port}/x")), &request())
        .await
        .unwrap_err();
    let WebhookError::Unreachable(m) = err else {
        panic!("{err:?}")
    };
    assert!(m.to_ascii_lowercase().contains("connect"), "{m}");
}
