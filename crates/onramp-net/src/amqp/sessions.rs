//! What the DPS and hub AMQP applications do alike: open a connection with
//! fe2o3-amqp's acceptor behind the frame guard, refuse with an AMQP error,
//! begin a session within the connection's bound, and read the address a
//! link is attached to.

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, IncomingSession, ListenerConnectionHandle, ListenerSessionHandle,
    SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Role};
use fe2o3_amqp::types::messaging::TargetArchetype;
use fe2o3_amqp::types::performatives::Attach;
use tokio::time::Instant;

use super::guard::FrameGuard;
use super::{AmqpIo, AmqpLimits};

/// Answers the protocol header and the Open of `stream` (which starts with
/// the client's `AMQP 0 1 0 0`, SASL being done or skipped), by `open_by`.
pub async fn open_connection(
    stream: Box<dyn AmqpIo>,
    limits: &AmqpLimits,
    container_id: &str,
    open_by: Instant,
) -> Result<ListenerConnectionHandle, String> {
    let acceptor = ConnectionAcceptor::builder()
        .container_id(container_id)
        .max_frame_size(limits.max_frame_bytes)
        .channel_max(limits.max_sessions.saturating_sub(1))
        .idle_time_out(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .build();
    let stream = FrameGuard::new(stream, limits.max_frame_bytes as usize);
    tokio::time::timeout_at(open_by, acceptor.accept(stream))
        .await
        .map_err(|_| "no Open in time".to_owned())?
        .map_err(|e| format!("opening: {e}"))
}

/// An AMQP error with a description for the peer.
pub fn amqp_error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(
        ErrorCondition::AmqpError(condition),
        Some(description.into()),
        None,
    )
}

/// Begins the peer's next session, the `begun`-th of the connection; past
/// `max_sessions` the connection is closed with `resource-limit-exceeded`.
/// `None` when the connection is over.
pub async fn begin_session(
    connection: &mut ListenerConnectionHandle,
    incoming: IncomingSession,
    begun: u16,
    max_sessions: u16,
) -> Option<ListenerSessionHandle> {
    if begun > max_sessions {
        let _ = connection
            .close_with_error(amqp_error(
                AmqpError::ResourceLimitExceeded,
                format!("at most {max_sessions} sessions per connection"),
            ))
            .await;
        return None;
    }
    match SessionAcceptor::new()
        .accept_incoming_session(incoming, connection)
        .await
    {
        Ok(session) => Some(session),
        Err(e) => {
            tracing::debug!(error = %e, "AMQP session not begun");
            None
        }
    }
}

/// The address a link names: its target when the peer sends, its source
/// when the peer receives.
pub fn attach_address(attach: &Attach) -> Option<String> {
    match attach.role {
        Role::Sender => attach.target.as_ref().and_then(|t| match t.as_ref() {
            TargetArchetype::Target(t) => t.address.clone(),
        }),
        Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
    }
}

/// The session's next Attach: `first` (read before the session was handed
/// over) if there is one, else the peer's next.
pub async fn next_attach(
    session: &mut ListenerSessionHandle,
    first: &mut Option<Attach>,
) -> Option<Attach> {
    match first.take() {
        Some(attach) => Some(attach),
        None => session.next_incoming_attach().await,
    }
}
