//! Sends each AMQP connection to the DPS endpoint or to the embedded hub,
//! by how it starts (the `MqttRouter` of AMQP):
//!
//! - `AMQP 3 1 0 0` (SASL): DPS, whose symmetric-key devices use `PLAIN`;
//! - `AMQP 0 1 0 0` with a TLS client certificate: DPS (an X.509 device
//!   registering; its first link names the registration);
//! - `AMQP 0 1 0 0` without a certificate: the hub, where the Azure IoT
//!   device SDKs authenticate by CBS put-token after the Open.
//!
//! Without an embedded hub every connection goes to DPS.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onramp_net::amqp::{AMQP_HEADER, AmqpApp, AmqpConnection, Rewind};
use tokio::io::AsyncReadExt;

/// The AMQP application of `onramp serve`.
pub struct AmqpRouter {
    pub dps: Arc<dyn AmqpApp>,
    pub hub: Option<Arc<dyn AmqpApp>>,
    /// How long the client has for its protocol header (the applications
    /// count their own deadlines from the same start).
    pub header_timeout: Duration,
}

/// Which application a connection that starts with `header` goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Dps,
    Hub,
}

/// The route for a protocol header and whether a client certificate came.
pub fn route(header: &[u8; 8], has_certificate: bool) -> Route {
    if *header == AMQP_HEADER && !has_certificate {
        Route::Hub
    } else {
        Route::Dps
    }
}

#[async_trait]
impl AmqpApp for AmqpRouter {
    async fn serve(&self, mut conn: AmqpConnection) {
        let Some(hub) = &self.hub else {
            return self.dps.serve(conn).await;
        };
        let mut header = [0u8; 8];
        let read = tokio::time::timeout_at(
            conn.accepted_at + self.header_timeout,
            conn.stream.read_exact(&mut header),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) {
            tracing::debug!(remote = %conn.remote, "AMQP connection without a protocol header in time");
            return;
        }
        let to = route(&header, !conn.peer.0.is_empty());
        conn.stream = Box::new(Rewind::new(header, conn.stream));
        match to {
            Route::Hub => hub.serve(conn).await,
            Route::Dps => self.dps.serve(conn).await,
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
        assert_eq!(route(&AMQP_HEADER, true), Route::Dps);
        assert_eq!(route(&AMQP_HEADER, false), Route::Hub);
        assert_eq!(route(b"AMQP\x01\x01\x00\x00", false), Route::Dps);
    }
}
