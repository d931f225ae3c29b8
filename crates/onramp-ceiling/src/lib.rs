//! The ceiling server: TLS and HTTP/1.1 like Onramp's front door, and an
//! answer to every request that costs nothing — the fixed JSON of an
//! assigned registration. `onramp bench --ceiling` runs the same load
//! against it and against Onramp, so that Onramp's figure can be read as a
//! share of what the machine and the load generator allow. Not part of the
//! `onramp` binary unless it is built with `--features ceiling`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What every request gets: a finished assignment, as Onramp answers it.
pub const ANSWER: &str = r#"{"operationId":"1.0000000000000000.00000000-0000-0000-0000-000000000000","status":"assigned","registrationState":{"registrationId":"ceiling","assignedHub":"ceiling.localhost","deviceId":"ceiling","status":"assigned","substatus":"initialAssignment","createdDateTimeUtc":"2026-01-01T00:00:00Z","lastUpdatedDateTimeUtc":"2026-01-01T00:00:00Z","etag":"\"00000000\""}}"#;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must, then answer.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER.as_bytes())));
    *resp.status_mut() = hyper::StatusCode::ACCEPTED;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn answers_a_register_request_over_tls() {
        let dir = std::env::temp_dir().join(format!("onramp-ceiling-{}", std::process::id()));
        let pki = onramp_net::pki::load_or_create(&dir, &["localhost".into()]).unwrap();
        let tls = onramp_net::tls::server_config(
            &pki.server_chain_pem,
            &pki.server_key_pem,
            &[b"http/1.1"],
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(tls)));

        let client = onramp_net::tls::client_config(Some(&pki.ca_pem)).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                Request::put("/0ne00000000/registrations/d1/register?api-version=2021-10-01")
                    .header("host", "localhost")
                    .body(Full::new(Bytes::from_static(
                        b"{\"registrationId\":\"d1\"}",
                    )))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, ANSWER.as_bytes());
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
