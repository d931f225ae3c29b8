//! One simulated device after another, over one worker's connection or fresh ones.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use onramp_model::TpmRegistrationChallenge;

use super::*;

pub(super) struct Worker {
    pub(super) next: Arc<AtomicU64>,
    pub(super) load: Load,
    pub(super) started: Instant,
    pub(super) progress: indicatif::ProgressBar,
}

impl Worker {
    pub(super) async fn run(self) -> Tally {
        let mut tally = Tally {
            latency_us: Some(histogram()),
            ..Default::default()
        };
        let mut connection: Option<SendRequest<Full<Bytes>>> = None;
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.load.devices {
                break;
            }
            if self.load.rate > 0.0 {
                let due = self.started + Duration::from_secs_f64(n as f64 / self.load.rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let (registration_id, key) = match self.load.fleet.device(&self.load.prefix, n) {
                Ok(d) => d,
                Err(e) => {
                    tally.record(
                        Outcome::Failed {
                            code: format!("key: {e}"),
                        },
                        Duration::ZERO,
                    );
                    continue;
                }
            };
            let started = Instant::now();
            let outcome = match self.load.protocol {
                Protocol::Https => {
                    if !self.load.reuse {
                        connection = None;
                    }
                    let tpm = self.load.fleet.tpm(n);
                    self.https(&mut connection, &registration_id, &key, tpm)
                        .await
                }
                _ => self.session(&registration_id, &key).await,
            };
            tally.record(outcome, started.elapsed());
            self.progress.inc(1);
        }
        tally
    }

    /// One device over MQTT or AMQP (either over WebSockets): its own
    /// connection, as a device of a fleet has.
    async fn session(&self, registration_id: &str, key: &str) -> Outcome {
        let spec = DeviceSpec {
            endpoint: self.load.endpoint.clone(),
            id_scope: self.load.id_scope.clone(),
            registration_id: registration_id.to_owned(),
            key: Some(key.to_owned()),
            payload: None,
            force: false,
            tpm: None,
        };
        let provisioned =
            simulator::provision_over_session(&spec, self.load.protocol, self.load.tls.clone());
        match provisioned.await {
            Ok(status) => outcome_of(status),
            Err(e) => Outcome::Failed {
                code: error_code(&e.to_string()),
            },
        }
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream =
            onramp_net::client::connect_tls_stream(&self.load.address, self.load.tls.clone())
                .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn https(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        registration_id: &str,
        key: &str,
        tpm: Option<&SoftTpm>,
    ) -> Outcome {
        let result = match tpm {
            Some(tpm) => self.https_tpm(connection, registration_id, tpm).await,
            None => return self.https_device(connection, registration_id, key).await,
        };
        match result {
            Ok(o) => o,
            Err(e) => {
                *connection = None;
                Outcome::Failed {
                    code: error_code(&e.to_string()),
                }
            }
        }
    }

    /// A TPM device: its keys without a token (answered 401 with the
    /// challenge), the blob opened in its TPM, the signed retry.
    async fn https_tpm(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        registration_id: &str,
        tpm: &SoftTpm,
    ) -> anyhow::Result<Outcome> {
        let resource = format!("{}/registrations/{registration_id}", self.load.id_scope);
        let body = serde_json::json!({
            "registrationId": registration_id,
            "tpm": {
                "endorsementKey": tpm.endorsement_key().to_base64(),
                "storageRootKey": tpm.storage_root_key().to_base64(),
            },
        });
        let (status, bytes) = self.put(connection, &resource, None, &body).await?;
        if status < 300 {
            return Ok(Outcome::Failed {
                code: format!("HTTP {status} without the TPM challenge"),
            });
        }
        if status != 401 {
            return answered(status, &bytes);
        }
        let challenge: TpmRegistrationChallenge = serde_json::from_slice(&bytes)?;
        let key = tpm.open(&STANDARD.decode(challenge.authentication_key)?)?;
        let token = sas::sign(
            &resource,
            &STANDARD.encode(key),
            simulator::unix_now() + 3600,
            Some("registration"),
        )
        .map_err(anyhow::Error::msg)?;
        let (status, bytes) = self.put(connection, &resource, Some(&token), &body).await?;
        let outcome = answered(status, &bytes)?;
        // Assigned counts only with the hub key wrapped for the TPM.
        if matches!(outcome, Outcome::Assigned { .. }) {
            let op: RegistrationOperationStatus = serde_json::from_slice(&bytes)?;
            if op.registration_state.and_then(|s| s.tpm).is_none() {
                bail!("assigned without tpm.authenticationKey");
            }
        }
        Ok(outcome)
    }

    /// One register request on the worker's connection: status and body.
    async fn put(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        resource: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, Bytes)> {
        let path = format!("/{resource}/register");
        let answer = self
            .send(connection, hyper::Method::PUT, &path, token, Some(body))
            .await?;
        Ok((answer.status, answer.body))
    }

    /// One request of the device API (`path` without its query) on the
    /// worker's connection, opened first if it has none.
    pub(super) async fn send(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Answer> {
        if connection.as_ref().is_none_or(|c| c.is_closed()) {
            *connection = Some(self.connect().await?);
        }
        let Some(sender) = connection.as_mut() else {
            bail!("no connection")
        };
        sender.ready().await?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!(
                "{path}?api-version={}",
                simulator::DEVICE_API_VERSION
            ))
            // What an SDK sends: the endpoint it was given.
            .header("host", &self.load.endpoint);
        if body.is_some() {
            request = request.header("content-type", "application/json; charset=utf-8");
        }
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let resp = sender.send_request(request.body(Full::new(bytes))?).await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// What the server answered one request.
pub(super) struct Answer {
    pub(super) status: u16,
    /// The `Retry-After` header's seconds.
    pub(super) retry_after: Option<u32>,
    pub(super) body: Bytes,
}

/// A register answer as the bench counts it.
fn answered(status: u16, bytes: &[u8]) -> anyhow::Result<Outcome> {
    if status >= 300 {
        let code = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|e| e.error_code.to_string())
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Ok(Outcome::Failed { code });
    }
    let op: RegistrationOperationStatus = serde_json::from_slice(bytes)?;
    Ok(outcome_of(op))
}

pub(super) fn outcome_of(status: RegistrationOperationStatus) -> Outcome {
    match (status.status, status.registration_state) {
        (RegistrationStatus::Assigned, Some(state)) => Outcome::Assigned {
            hub: state.assigned_hub.unwrap_or_default(),
        },
        (RegistrationStatus::Assigning, _) => Outcome::Failed {
            code: "still assigning".into(),
        },
        (_, Some(state)) => Outcome::Failed {
            code: state
                .error_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "failed".into()),
        },
        (other, None) => Outcome::Failed {
            code: other.to_string(),
        },
    }
}

/// The six-digit code in an error message, else the message's first words.
pub(super) fn error_code(message: &str) -> String {
    message
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .map(str::to_owned)
        .unwrap_or_else(|| message.chars().take(60).collect())
}

pub(super) fn rand_u32() -> u32 {
    let bytes = onramp_core::keys::random_bytes(4);
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
