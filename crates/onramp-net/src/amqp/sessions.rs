//! What the DPS and hub AMQP applications do alike once fe2o3-amqp's
//! acceptor has opened a connection: refuse with an AMQP error, begin a
//! session within the connection's bound, and read the address a link is
//! attached to.

use fe2o3_amqp::acceptor::{
    IncomingSession, ListenerConnectionHandle, ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Role};
use fe2o3_amqp::types::messaging::TargetArchetype;
use fe2o3_amqp::types::performatives::Attach;

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
