//! The DPS device API over AMQP 1.0 (on 5671 over TLS, and over WebSockets
//! on the HTTPS port).
//!
//! A connection starts with one of two protocol headers: `AMQP 3 1 0 0`
//! (symmetric-key devices: SASL `PLAIN`, user name
//! `{idScope}/registrations/{registrationId}`, password the SAS token; TPM
//! devices: SASL `TPM`, the nonce challenge in SASL frames) or
//! `AMQP 0 1 0 0` (X.509 devices: no SASL, the certificate came in the TLS
//! handshake). Onramp runs the SASL exchange itself ([`sasl`]) because the
//! credential check needs the store, then hands the stream to fe2o3-amqp's
//! acceptor for the Open, the sessions and the links.
//!
//! The device attaches a sending and a receiving link, both addressed to its
//! registration (`{idScope}/registrations/{id}`, with a leading `/` or as
//! `amqps://{host}/…`). Each request carries `iotdps-operation-type`
//! (`iotdps-register` or `iotdps-get-operationstatus`, with
//! `iotdps-operation-id`); it is accepted, then answered on the receiving
//! link with one Data section of JSON, the request's correlation-id, and
//! `iotdps-status`, `retry-after` and `Retry-After` application properties.
//! A request the engine refuses is settled `rejected`, with the JSON error
//! body as the error's description.

mod router;
mod sasl;
mod session;

use std::sync::Arc;

use async_trait::async_trait;
use onramp_core::attest::DeviceCredential;
use onramp_core::engine::Engine;
use onramp_core::events::Protocol;
use onramp_net::amqp::sessions::{SessionStart, open_connection};
use onramp_net::amqp::{AmqpApp, AmqpConnection, OpenedConnection, log_end};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::EndpointConfig;

pub use onramp_net::amqp::{AMQP_HEADER, AmqpLimits, Rewind, SASL_HEADER, guard};
pub use router::{AmqpRouter, Route, route};
pub use sasl::{
    MAX_SASL_FRAME, Mechanism, TpmInit, decode_frame as decode_sasl_frame, parse_plain,
    parse_tpm_init, parse_tpm_response, tpm_blob_segments,
};
pub use session::{Address, parse_address, register_message, request_message, status_message};

/// Who a connection proved to be, before any link.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub scope: String,
    pub registration_id: String,
}

/// What every link of one connection shares.
pub(crate) struct ConnectionContext {
    pub engine: Arc<Engine>,
    pub config: EndpointConfig,
    pub protocol: Protocol,
    pub credential: DeviceCredential,
    pub client_addr: std::net::IpAddr,
    /// Set by SASL `PLAIN`; for X.509 devices by their first link, once
    /// the certificate was checked against the registration it addresses.
    pub identity: tokio::sync::Mutex<Option<Identity>>,
}

/// The DPS device API over AMQP.
pub struct DpsAmqp {
    engine: Arc<Engine>,
    config: EndpointConfig,
    limits: AmqpLimits,
}

impl DpsAmqp {
    pub fn new(engine: Arc<Engine>, config: EndpointConfig, limits: AmqpLimits) -> Self {
        Self {
            engine,
            config,
            limits,
        }
    }
}

#[async_trait]
impl AmqpApp for DpsAmqp {
    async fn serve(&self, conn: AmqpConnection) {
        log_end(conn.remote, "AMQP", self.run(conn).await);
    }

    /// An X.509 device whose first link names a registration (see
    /// [`AmqpRouter`]).
    async fn serve_opened(&self, mut opened: OpenedConnection) {
        let context = self.context(
            Protocol::amqp(opened.websocket),
            x509_credential(&opened.peer),
            opened.remote.ip(),
            None,
        );
        let first = Some((opened.session, opened.attach));
        let start = SessionStart::new(self.limits, opened.accepted_at, first);
        let connection = &mut opened.connection;
        session::serve_connection(connection, context, &mut opened.shutdown, start).await;
        let _ = connection.close().await;
    }
}

/// The credential of a device that presented `peer` in the TLS handshake.
fn x509_credential(peer: &onramp_net::PeerCertificates) -> DeviceCredential {
    DeviceCredential::X509Chain(peer.0.iter().map(|c| c.as_ref().to_vec()).collect())
}

impl DpsAmqp {
    fn context(
        &self,
        protocol: Protocol,
        credential: DeviceCredential,
        client_addr: std::net::IpAddr,
        identity: Option<Identity>,
    ) -> Arc<ConnectionContext> {
        Arc::new(ConnectionContext {
            engine: self.engine.clone(),
            config: self.config.clone(),
            protocol,
            credential,
            client_addr,
            identity: tokio::sync::Mutex::new(identity),
        })
    }

    async fn run(&self, conn: AmqpConnection) -> Result<(), String> {
        let AmqpConnection {
            mut stream,
            peer,
            remote,
            websocket,
            accepted_at,
            mut shutdown,
        } = conn;
        let open_by = accepted_at + self.limits.open_timeout;
        let protocol = Protocol::amqp(websocket);
        let mut header = [0u8; 8];
        tokio::time::timeout_at(open_by, stream.read_exact(&mut header))
            .await
            .map_err(|_| "no protocol header in time".to_owned())?
            .map_err(|e| format!("reading the protocol header: {e}"))?;
        let (identity, credential, stream): (_, _, Box<dyn onramp_net::amqp::AmqpIo>) = match header
        {
            SASL_HEADER => {
                let outcome = tokio::time::timeout_at(
                    open_by,
                    sasl::negotiate(&mut stream, &self.engine, protocol, remote.ip()),
                )
                .await
                .map_err(|_| "SASL not finished in time".to_owned())??;
                (Some(outcome.identity), outcome.credential, stream)
            }
            AMQP_HEADER if !peer.0.is_empty() => (
                None,
                x509_credential(&peer),
                Box::new(Rewind::new(header, stream)),
            ),
            AMQP_HEADER => {
                // Without SASL only a TLS client certificate can say who
                // the device is; ask for SASL.
                let _ = stream.write_all(&SASL_HEADER).await;
                return Err("no SASL and no client certificate".into());
            }
            _ => {
                // The header this server speaks, then close (AMQP 1.0 §2.2).
                let _ = stream.write_all(&SASL_HEADER).await;
                return Err(format!("unsupported protocol header {header:02x?}"));
            }
        };
        let mut connection = open_connection(stream, &self.limits, "onramp-dps", open_by).await?;
        let context = self.context(protocol, credential, remote.ip(), identity);
        let start = SessionStart::new(self.limits, accepted_at, None);
        session::serve_connection(&mut connection, context, &mut shutdown, start).await;
        let _ = connection.close().await;
        Ok(())
    }
}
