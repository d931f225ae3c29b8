//! The service API over HTTPS: a client signed with a service policy's key,
//! its refusals, and the local deployment's owner connection string.

use anyhow::{Context, bail};
use onramp_core::connection_string::ConnectionString;
use onramp_core::sas;
use onramp_core::tenant::OWNER_POLICY;
use onramp_model::ErrorBody;
use reqwest::Method;
use serde_json::Value;

use crate::cli::ServiceApi;
use crate::config::Config;
use crate::device::http_client;
use crate::local::{self, Deployment, Target};

const SERVICE_API_VERSION: &str = "2021-10-01";

/// How many times a throttled call (429 with Retry-After) waits and goes again.
const MAX_THROTTLED_WAITS: u32 = 10;

/// A refusal of the service API: its HTTP status, then the Azure error code
/// and message (or the body as it came).
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: u16,
    /// The Azure error code, when the body was an Azure error.
    pub(super) code: Option<u32>,
    /// The error's message, or the body as it came.
    pub(super) message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "HTTP {} {code}: {}", self.status, self.message),
            None => write!(f, "HTTP {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ApiError {}

pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    host: String,
    key_name: String,
    key: String,
    target: Target,
}

impl Api {
    pub(crate) async fn open(args: &ServiceApi) -> anyhow::Result<Self> {
        let config = Config::load(&args.location)?;
        let local = Deployment::read(&config);
        let connection_string = match &args.connection_string {
            Some(cs) => cs.clone(),
            None => local_connection_string(&config, local.as_ref()).await?,
        };
        let cs = ConnectionString::parse(&connection_string).map_err(anyhow::Error::msg)?;
        let (Some(key_name), Some(key)) = (cs.shared_access_key_name, cs.shared_access_key) else {
            bail!("the connection string needs SharedAccessKeyName and SharedAccessKey");
        };
        let target = args
            .endpoint
            .clone()
            .unwrap_or_else(|| cs.host_name.clone());
        // When the call goes to the local deployment, a refused connection
        // means it is stopped: say how to start it.
        let local_endpoint = local.as_ref().map_or_else(
            || local::configured_endpoint(&config),
            |d| d.endpoint.clone(),
        );
        let start = target
            .eq_ignore_ascii_case(&local_endpoint)
            .then(|| match &local {
                Some(d) => d.start_command(&config, &args.location),
                None => local::start_command(&args.location, &config),
            });
        let ca = args.ca.clone().or_else(|| local.and_then(|d| d.ca_cert));
        Ok(Self {
            client: http_client(&config, ca.as_ref())?,
            base: format!("https://{target}"),
            host: cs.host_name,
            key_name,
            key: key.expose().to_owned(),
            target: Target {
                address: onramp_model::authority::with_default_port(&target, 443).unwrap_or(target),
                start,
            },
        })
    }

    /// A service token valid for an hour.
    fn token(&self) -> anyhow::Result<String> {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64
            + 3600;
        sas::sign(&self.host, &self.key, expiry, Some(&self.key_name)).map_err(anyhow::Error::msg)
    }

    /// Sends `req`; a transport error says what is (not) answering.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        match req.send().await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let err = anyhow::Error::new(e).context(format!("cannot reach {}", self.base));
                Err(self.target.explain(err).await)
            }
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.request(method, path, body, None).await
    }

    /// A call that holds only while the resource has the ETag `if_match`, when given.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<Value> {
        let token = self.token()?;
        let mut waits = 0;
        let resp = loop {
            let mut req = self
                .client
                .request(
                    method.clone(),
                    // A path may carry a query of its own.
                    format!(
                        "{}/{path}{}api-version={SERVICE_API_VERSION}",
                        self.base,
                        if path.contains('?') { '&' } else { '?' }
                    ),
                )
                .header("Authorization", &token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(etag) = if_match {
                req = req.header("If-Match", etag);
            }
            let resp = self.send(req).await?;
            // Throttled: wait as long as the service asks, as the Azure
            // SDKs do, a few times before giving up.
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match retry_after {
                Some(seconds) if resp.status() == 429 && waits < MAX_THROTTLED_WAITS => {
                    waits += 1;
                    let seconds = seconds.clamp(1, 60);
                    eprintln!(
                        "the service is throttling these calls (HTTP 429): waiting {seconds} s as it asks"
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
                }
                _ => break resp,
            }
        };
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(err) => (Some(err.error_code), err.message),
                Err(_) => (None, text),
            };
            return Err(ApiError {
                status: status.as_u16(),
                code,
                message,
            }
            .into());
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("unreadable answer: {text}"))
    }

    /// Every item of a query, following continuation tokens.
    pub(super) async fn query_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let token = self.token()?;
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut req = self
                .client
                .post(format!(
                    "{}/{path}?api-version={SERVICE_API_VERSION}",
                    self.base
                ))
                .header("Authorization", &token)
                .header("x-ms-max-item-count", "1000")
                .json(&serde_json::json!({"query": "*"}));
            if let Some(c) = &continuation {
                req = req.header("x-ms-continuation", c);
            }
            let resp = self.send(req).await?;
            let status = resp.status();
            continuation = resp
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("HTTP {}: {text}", status.as_u16());
            }
            let page: Vec<Value> = serde_json::from_str(&text)?;
            items.extend(page);
            if continuation.is_none() {
                return Ok(items);
            }
        }
    }
}

/// The owner policy's connection string of the local deployment.
async fn local_connection_string(
    config: &Config,
    state: Option<&Deployment>,
) -> anyhow::Result<String> {
    let store = local::open_existing(config)
        .await
        .context("no --connection-string given, and the local deployment could not be read")?;
    let service = state
        .map(|s| s.service.clone())
        .unwrap_or_else(|| config.service.name.clone());
    let owner = store
        .policies(&service)
        .await?
        .into_iter()
        .find(|p| p.name == OWNER_POLICY)
        .ok_or_else(|| anyhow::anyhow!("provisioning service '{service}' has no {OWNER_POLICY} policy; pass --connection-string"))?;
    let endpoint = state.map_or_else(
        || local::configured_endpoint(config),
        |s| s.endpoint.clone(),
    );
    Ok(owner.connection_string(&endpoint))
}
