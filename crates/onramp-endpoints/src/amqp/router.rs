//! Sends each AMQP connection to the DPS endpoint or to the embedded hub,
//! by how it starts (the `MqttRouter` of AMQP):
//!
//! - `AMQP 3 1 0 0` (SASL): DPS, whose symmetric-key devices use `PLAIN`;
//! - `AMQP 0 1 0 0` without a certificate: the hub, where the Azure IoT
//!   device SDKs authenticate by CBS put-token after the Open;
//! - `AMQP 0 1 0 0` with a TLS client certificate: an X.509 device, which
//!   may be registering or talking to its hub, with the same certificate
//!   and the same host name in its Open. The router answers the Open
//!   itself, begins the first session and reads its first Attach: a link
//!   to `{idScope}/registrations/{id}` goes to DPS, any other to the hub,
//!   and the chosen application serves the connection from there on.
//!
//! Without an embedded hub every connection goes to DPS.

use std::sync::Arc;

use async_trait::async_trait;
use fe2o3_amqp::types::definitions::AmqpError;
use onramp_net::amqp::sessions::{amqp_error, attach_address, begin_session, open_connection};
use onramp_net::amqp::{
    AMQP_HEADER, AmqpApp, AmqpConnection, AmqpLimits, OpenedConnection, Rewind,
};
use tokio::io::AsyncReadExt;

use super::session::parse_address;

/// The AMQP application of `onramp serve`.
pub struct AmqpRouter {
    pub dps: Arc<dyn AmqpApp>,
    pub hub: Option<Arc<dyn AmqpApp>>,
    /// The limits both applications apply; the router's own steps (header,
    /// Open, first session and first Attach) are within `open_timeout`.
    pub limits: AmqpLimits,
}

/// Which application a connection that starts with `header` goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Dps,
    Hub,
    /// An X.509 device: its first link decides ([`route_link`]).
    FirstLink,
}

/// The route for a protocol header and whether a client certificate came.
pub fn route(header: &[u8; 8], has_certificate: bool) -> Route {
    match (*header == AMQP_HEADER, has_certificate) {
        (true, false) => Route::Hub,
        (true, true) => Route::FirstLink,
        (false, _) => Route::Dps,
    }
}

/// The route of an X.509 device's connection whose first link is attached
/// to `address`: DPS for a registration, the hub for anything else.
pub fn route_link(address: Option<&str>) -> Route {
    if address.and_then(parse_address).is_some() {
        Route::Dps
    } else {
        Route::Hub
    }
}

#[async_trait]
impl AmqpApp for AmqpRouter {
    async fn serve(&self, mut conn: AmqpConnection) {
        let Some(hub) = &self.hub else {
            return self.dps.serve(conn).await;
        };
        let open_by = conn.accepted_at + self.limits.open_timeout;
        let mut header = [0u8; 8];
        let read = tokio::time::timeout_at(open_by, conn.stream.read_exact(&mut header)).await;
        if !matches!(read, Ok(Ok(_))) {
            tracing::debug!(remote = %conn.remote, "AMQP connection without a protocol header in time");
            return;
        }
        let to = route(&header, !conn.peer.0.is_empty());
        conn.stream = Box::new(Rewind::new(header, conn.stream));
        match to {
            Route::Hub => hub.serve(conn).await,
            Route::Dps => self.dps.serve(conn).await,
            Route::FirstLink => {
                let remote = conn.remote;
                match self.open_to_first_link(conn).await {
                    Ok(opened) => match route_link(attach_address(&opened.attach).as_deref()) {
                        Route::Hub => hub.serve_opened(opened).await,
                        _ => self.dps.serve_opened(opened).await,
                    },
                    Err(reason) => tracing::debug!(%remote, %reason, "AMQP connection ended"),
                }
            }
        }
    }
}

impl AmqpRouter {
    /// Opens an X.509 device's connection up to its first Attach, within
    /// the connection's deadline.
    async fn open_to_first_link(&self, conn: AmqpConnection) -> Result<OpenedConnection, String> {
        let open_by = conn.accepted_at + self.limits.open_timeout;
        let mut connection = open_connection(conn.stream, &self.limits, "onramp", open_by).await?;
        let first_link = async {
            let incoming = connection.next_incoming_session().await?;
            let mut session =
                begin_session(&mut connection, incoming, 1, self.limits.max_sessions).await?;
            let attach = session.next_incoming_attach().await?;
            Some((session, attach))
        };
        match tokio::time::timeout_at(open_by, first_link).await {
            Ok(Some((session, attach))) => Ok(OpenedConnection {
                connection,
                session,
                attach,
                peer: conn.peer,
                remote: conn.remote,
                websocket: conn.websocket,
                accepted_at: conn.accepted_at,
                shutdown: conn.shutdown,
            }),
            Ok(None) => Err("ended before its first link".into()),
            Err(_) => {
                let _ = connection
                    .close_with_error(amqp_error(
                        AmqpError::UnauthorizedAccess,
                        "no link attached in time",
                    ))
                    .await;
                Err("no link attached in time".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_net::amqp::SASL_HEADER;

    #[test]
    fn headers_and_certificates_choose_the_application() {
        assert_eq!(route(&SASL_HEADER, false), Route::Dps);
        assert_eq!(route(&SASL_HEADER, true), Route::Dps);
        assert_eq!(route(&AMQP_HEADER, true), Route::FirstLink);
        assert_eq!(route(&AMQP_HEADER, false), Route::Hub);
        assert_eq!(route(b"AMQP\x01\x01\x00\x00", false), Route::Dps);
    }

    #[test]
    fn an_x509_devices_first_link_chooses_the_application() {
        for dps in [
            "0ne00TEST01/registrations/dev-1",
            "/0ne00TEST01/registrations/dev-1",
            "amqps://localhost:5671/0ne00TEST01/registrations/dev-1",
        ] {
            assert_eq!(route_link(Some(dps)), Route::Dps, "{dps}");
        }
        for hub in [
            "/devices/dev-1/messages/events",
            "/devices/dev-1/twin",
            "$cbs",
            "anything else",
        ] {
            assert_eq!(route_link(Some(hub)), Route::Hub, "{hub}");
        }
        assert_eq!(route_link(None), Route::Hub);
    }
}
