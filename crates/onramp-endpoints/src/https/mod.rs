//! The HTTPS application: DPS device API, DPS service API and `/health` on
//! one listener, plus (when embedded) the companion hub's routes. Metrics
//! are not here: they have a listener of their own ([`crate::metrics`]).

mod device;
pub(crate) mod respond;
pub mod route;
mod service;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onramp_core::ProvisioningError;
use onramp_core::admin::Admin;
use onramp_core::engine::Engine;
use onramp_model::ErrorCode;
use onramp_net::Shutdown;
use onramp_net::amqp::AmqpApp;
use onramp_net::mqtt::ws::{self, WsApp};
use onramp_net::mqtt::{MqttApp, MqttLimits};
use tower::ServiceExt;

use route::{Route, RouteMatch};

/// Settings of the HTTPS endpoints.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Host names the service API answers to (checked against tokens' `sr`).
    pub service_host_names: Vec<String>,
    /// `https://host[:port]` for `Location` headers.
    pub public_base_url: String,
    /// Largest device request and single-entity service request (Azure: 96 KB).
    pub max_body_bytes: usize,
    /// Largest bulk enrollment request.
    pub max_bulk_body_bytes: usize,
    /// Clock skew allowed on service tokens.
    pub token_skew_seconds: i64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            service_host_names: vec!["localhost".into()],
            public_base_url: "https://localhost".into(),
            max_body_bytes: 96 * 1024,
            max_bulk_body_bytes: 32 * 1024 * 1024,
            token_skew_seconds: 300,
        }
    }
}

pub struct AppState {
    pub engine: Arc<Engine>,
    pub admin: Arc<Admin>,
    pub config: EndpointConfig,
    /// Routes served when a path is not a DPS path (the embedded hub).
    pub fallback: Option<Router>,
    /// MQTT (and AMQP) over WebSockets, upgraded on any path.
    pub websockets: Option<WebSockets>,
}

/// What WebSocket upgrades are handed to: MQTT (subprotocol `mqtt`), and
/// AMQP (`AMQPWSB10` or `amqp`) when `amqp` is set.
#[derive(Clone)]
pub struct WebSockets {
    pub app: Arc<dyn MqttApp>,
    pub limits: MqttLimits,
    pub shutdown: Shutdown,
    pub amqp: Option<AmqpWebSockets>,
}

/// The AMQP application WebSocket upgrades are handed to.
#[derive(Clone)]
pub struct AmqpWebSockets {
    pub app: Arc<dyn AmqpApp>,
    /// The largest WebSocket message accepted (one AMQP frame or more).
    pub max_message_bytes: usize,
}

/// The application to serve with [`onramp_net::serve`].
pub fn app(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    if ws::is_upgrade(req.headers()) {
        return match &state.websockets {
            Some(w) if ws::offers_mqtt(req.headers()) => {
                let app = WsApp::Mqtt(w.app.clone(), w.limits);
                ws::accept(req, app, w.shutdown.receiver())
            }
            Some(WebSockets {
                amqp: Some(amqp),
                shutdown,
                ..
            }) if ws::offers_amqp(req.headers()) => {
                let app = WsApp::Amqp(amqp.app.clone(), amqp.max_message_bytes);
                ws::accept(req, app, shutdown.receiver())
            }
            _ => respond::error(&ProvisioningError::new(
                ErrorCode::InvalidArgument,
                "WebSocket upgrades here carry MQTT or AMQP: offer the subprotocol mqtt or AMQPWSB10",
            )),
        };
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Some(page) = crate::console::serve(&method, &path, req.headers()) {
        return page;
    }
    let route = match route::route(&method, &path) {
        RouteMatch::Found(r) => r,
        RouteMatch::WrongMethod { allowed } => {
            let mut resp = respond::error(&ProvisioningError::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not allowed on {path}; use {allowed}"),
            ));
            if let Ok(v) = HeaderValue::from_str(allowed) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        RouteMatch::NotMine => {
            if let Some(fallback) = &state.fallback {
                return match fallback.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
            }
            return respond::error(&ProvisioningError::new(
                ErrorCode::RouteNotFound,
                format!("{method} {path} is not an operation of this service"),
            ));
        }
    };
    // What the headers alone can refuse is refused before any body is read.
    if let Some(limit) = body_limit(&route, &state.config)
        && let Some(length) = content_length(req.headers())
        && length > limit as u64
    {
        return respond::error(&ProvisioningError::new(
            ErrorCode::RequestTooLarge,
            format!(
                "Content-Length {length} is over this operation's limit; send at most {limit} bytes"
            ),
        ));
    }
    let query = Query::parse(req.uri().query());
    let (parts, body) = req.into_parts();
    let incoming = Incoming { query, parts, body };
    let resp = match route {
        Route::Health => (StatusCode::OK, "ok").into_response(),
        Route::DeviceRegister(_) | Route::DeviceOperation(..) | Route::DeviceStatus(_) => {
            device::handle(&state, route, incoming).await
        }
        other => service::handle(&state, other, incoming).await,
    };
    tracing::debug!(
        target: "onramp::http",
        %method, %path,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

/// The largest body `route` reads; `None` for routes that read none (what
/// is sent is thrown away by the listener).
fn body_limit(route: &Route, config: &EndpointConfig) -> Option<usize> {
    match route {
        Route::EnrollmentBulk | Route::GroupBulk => Some(config.max_bulk_body_bytes),
        Route::DeviceRegister(_)
        | Route::DeviceStatus(_)
        | Route::Enrollment(_)
        | Route::EnrollmentQuery
        | Route::Group(_)
        | Route::GroupQuery
        | Route::RegistrationQuery(_)
        | Route::Certificate(_)
        | Route::CertificateVerify(_) => Some(config.max_body_bytes),
        _ => None,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A routed request taken apart; the route holds its path parameters.
pub(super) struct Incoming {
    query: Query,
    parts: http::request::Parts,
    body: Body,
}

/// The query string, decoded.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every DPS call carries `api-version`. Any well-formed version is
    /// accepted (devices in the field still send 2017–2019 versions); a value
    /// that is not a version at all is refused.
    pub(crate) fn require_api_version(&self) -> Result<&str, ProvisioningError> {
        let Some(value) = self.get("api-version").filter(|v| !v.is_empty()) else {
            return Err(ProvisioningError::new(
                ErrorCode::MissingApiVersion,
                "the api-version query parameter is required, e.g. ?api-version=2021-10-01",
            ));
        };
        onramp_model::ids::check_api_version(value)
            .map_err(|m| ProvisioningError::new(ErrorCode::InvalidApiVersion, m))?;
        Ok(value)
    }
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
