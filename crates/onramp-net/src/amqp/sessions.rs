//! What the DPS and hub AMQP applications do alike: open a connection with
//! fe2o3-amqp's acceptor behind the frame guard, serve its sessions within
//! their bound (and close one that does not authenticate in time), accept a
//! session's links within theirs with the address each names, read a link's
//! messages, settle a link of requests, and refuse with an AMQP error.

use std::future::Future;
use std::sync::Arc;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, IncomingSession, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Role};
use fe2o3_amqp::types::messaging::{Body, Data, Message, Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
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

/// How a connection's sessions start: their bounds, by when a device must
/// have authenticated, and the session a router already began with the
/// first Attach it read there (when the router opened the connection).
pub struct SessionStart {
    pub limits: AmqpLimits,
    pub authenticate_by: Instant,
    pub first: Option<(ListenerSessionHandle, Attach)>,
}

impl SessionStart {
    /// For a connection accepted (its TLS handshake or WebSocket upgrade
    /// done) at `accepted_at`: a device must authenticate within
    /// `limits.open_timeout`.
    pub fn new(
        limits: AmqpLimits,
        accepted_at: Instant,
        first: Option<(ListenerSessionHandle, Attach)>,
    ) -> Self {
        Self {
            limits,
            authenticate_by: accepted_at + limits.open_timeout,
            first,
        }
    }
}

/// An application's state for one connection, as [`serve_sessions`] needs
/// it.
pub trait ConnectionSessions: Send + Sync + 'static {
    /// Why the connection is closed (`unauthorized-access`) when no device
    /// has authenticated by the deadline.
    const LATE: &'static str;

    /// Whether a device has authenticated on the connection.
    fn authenticated(&self) -> impl Future<Output = bool> + Send;

    /// Serves one session's links until the session ends.
    fn serve_session(self: Arc<Self>, links: LinkGate)
    -> impl Future<Output = ()> + Send + 'static;
}

/// Serves the connection's sessions, each on a task of its own, until the
/// connection ends or `ended` completes (with the error to close it with,
/// if any). Unless a device has authenticated by `start.authenticate_by`,
/// the connection is closed with `unauthorized-access`.
pub async fn serve_sessions<C: ConnectionSessions>(
    connection: &mut ListenerConnectionHandle,
    state: Arc<C>,
    start: SessionStart,
    ended: impl Future<Output = Option<definitions::Error>>,
) {
    let limits = start.limits;
    let mut sessions = JoinSet::new();
    let mut begun = 0u16;
    if let Some((session, attach)) = start.first {
        begun = 1;
        let links = LinkGate::new(session, &limits, Some(attach));
        sessions.spawn(state.clone().serve_session(links));
    }
    let mut in_time = state.authenticated().await;
    let mut ended = std::pin::pin!(ended);
    loop {
        let incoming = tokio::select! {
            incoming = connection.next_incoming_session() => incoming,
            error = &mut ended => {
                if let Some(error) = error {
                    let _ = connection.close_with_error(error).await;
                }
                return;
            }
            () = tokio::time::sleep_until(start.authenticate_by), if !in_time => {
                in_time = state.authenticated().await;
                if in_time {
                    continue;
                }
                let _ = connection
                    .close_with_error(amqp_error(AmqpError::UnauthorizedAccess, C::LATE))
                    .await;
                return;
            }
        };
        let Some(incoming) = incoming else { return };
        begun += 1;
        let Some(session) = begin_session(connection, incoming, begun, limits.max_sessions).await
        else {
            return;
        };
        let links = LinkGate::new(session, &limits, None);
        sessions.spawn(state.clone().serve_session(links));
    }
}

/// A link the peer attached: the link, the peer's role on it and the
/// address it names (see [`attach_address`]).
pub struct AttachedLink {
    pub link: LinkEndpoint,
    pub role: Role,
    pub address: Option<String>,
}

/// fe2o3-amqp's link acceptor with its default source and target checks.
type DefaultLinkAcceptor = LinkAcceptor<fn(Source) -> Option<Source>, fn(Target) -> Option<Target>>;

/// A session's links: accepted, at most `max_links` of them, and each
/// served on a task that ends with the session.
pub struct LinkGate {
    session: ListenerSessionHandle,
    acceptor: DefaultLinkAcceptor,
    attached: usize,
    max_links: usize,
    /// An Attach read before the session was handed over (by the router).
    first: Option<Attach>,
    tasks: JoinSet<()>,
}

impl LinkGate {
    /// Links carry messages of at most `limits.max_message_bytes`; `first`
    /// is an Attach already read from the session, answered before any
    /// other.
    fn new(session: ListenerSessionHandle, limits: &AmqpLimits, first: Option<Attach>) -> Self {
        Self {
            session,
            acceptor: LinkAcceptor::builder()
                .max_message_size(limits.max_message_bytes)
                .build(),
            attached: 0,
            max_links: limits.max_links,
            first,
            tasks: JoinSet::new(),
        }
    }

    /// The next link the peer attaches; `None` when the session ends. A
    /// link past the session's bound is refused with
    /// `resource-limit-exceeded` and the next one awaited.
    pub async fn next(&mut self) -> Option<AttachedLink> {
        loop {
            let attach = match self.first.take() {
                Some(attach) => attach,
                None => self.session.next_incoming_attach().await?,
            };
            self.attached += 1;
            let role = attach.role.clone();
            let address = attach_address(&attach);
            let accepted = self
                .acceptor
                .accept_incoming_attach(attach, &mut self.session)
                .await;
            let link = match accepted {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "AMQP link not attached");
                    continue;
                }
            };
            if self.attached > self.max_links {
                let bound = format!("at most {} links per session", self.max_links);
                refuse_link(link, amqp_error(AmqpError::ResourceLimitExceeded, bound)).await;
                continue;
            }
            return Some(AttachedLink {
                link,
                role,
                address,
            });
        }
    }

    /// Serves a link on a task of the session's.
    pub fn spawn(&mut self, link: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(link);
    }

    /// Ends the session; the tasks of its links end with it.
    pub async fn end(mut self) {
        let _ = self.session.end().await;
    }
}

/// Detaches a link with `error`.
pub async fn refuse_link(link: LinkEndpoint, error: definitions::Error) {
    match link {
        LinkEndpoint::Receiver(r) => {
            let _ = r.close_with_error(error).await;
        }
        LinkEndpoint::Sender(s) => {
            let _ = s.close_with_error(error).await;
        }
    }
}

/// The next message on a link the peer sends on; `None` once the link has
/// ended (`link` names it in the log).
pub async fn next_delivery(receiver: &mut Receiver, link: &str) -> Option<Delivery<Body<Value>>> {
    match receiver.recv::<Body<Value>>().await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!(error = %e, "{link} link ended");
            None
        }
    }
}

/// Serves a link of requests until it ends (`link` names it in the log):
/// each message is settled `accepted` with what `answer` makes of it
/// queued on `answers`, or `rejected` with its error.
pub async fn serve_requests<F, Fut>(
    mut receiver: Receiver,
    link: &str,
    answers: mpsc::Sender<Message<Data>>,
    mut answer: F,
) where
    F: FnMut(Message<Body<Value>>) -> Fut,
    Fut: Future<Output = Result<Message<Data>, definitions::Error>>,
{
    while let Some(delivery) = next_delivery(&mut receiver, link).await {
        let (delivery, message) = delivery.into_parts();
        let served = match answer(message).await {
            Ok(message) => {
                receiver.accept(delivery).await.is_ok() && answers.send(message).await.is_ok()
            }
            Err(error) => receiver.reject(delivery, error).await.is_ok(),
        };
        if !served {
            break;
        }
    }
    let _ = receiver.close().await;
}
