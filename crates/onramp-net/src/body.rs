//! Request bodies at the front door: a deadline on the whole body, and the
//! rest of a body the application did not read thrown away before the
//! connection moves on.
//!
//! Why throw it away: an HTTP/1.1 client such as Python's `requests` sends
//! its whole body before it reads the answer. A server that answers early
//! (401, 413, 405…) and closes with unread bytes in its receive buffer makes
//! the kernel send a reset, and the client sees a dropped TLS connection
//! instead of the answer. Reading the rest (bounded in bytes and time) keeps
//! the connection until the client has sent everything and read the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The request body did not arrive in full before its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
pub struct BodyTimedOut(pub std::time::Duration);

impl BodyTimedOut {
    /// Whether `error`, or any error it wraps, is a [`BodyTimedOut`].
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> Option<BodyTimedOut> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
                return Some(*t);
            }
            next = e.source();
        }
        None
    }
}

type BusyToken = Arc<crate::listener::Busy>;

/// A request body with a deadline for all of it, which discards what the
/// application leaves unread when dropped.
pub struct GuardedBody {
    inner: Option<Incoming>,
    deadline: Instant,
    timeout: std::time::Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes read and thrown away at most, after the application is done.
    discard_limit: u64,
    /// Discarding is skipped when the client waits for `100 Continue`
    /// before sending anything: it then sends nothing more.
    waits_for_continue: bool,
    polled: bool,
    busy: Option<BusyToken>,
}

impl GuardedBody {
    pub(crate) fn new(
        inner: Incoming,
        timeout: std::time::Duration,
        discard_limit: u64,
        discard: bool,
        waits_for_continue: bool,
        busy: BusyToken,
    ) -> Self {
        let deadline = Instant::now() + timeout;
        Self {
            inner: Some(inner),
            deadline,
            timeout,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            discard_limit: if discard { discard_limit } else { 0 },
            waits_for_continue,
            polled: false,
            busy: Some(busy),
        }
    }

    fn finish(&mut self) {
        self.inner = None;
        self.busy = None;
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        // Checked on every frame too: a client trickling a byte at a time
        // always has a frame ready and would never let the timer be polled.
        if Instant::now() >= this.deadline {
            this.finish();
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.finish();
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        let busy = self.busy.take();
        if body.is_end_stream()
            || self.discard_limit == 0
            || (self.waits_for_continue && !self.polled)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (deadline, limit) = (self.deadline, self.discard_limit);
        runtime.spawn(async move {
            discard(body, deadline, limit).await;
            drop(busy);
        });
    }
}

/// Reads `body` to its end and throws it away, up to `limit` bytes and
/// until `deadline`; dropping it earlier makes the connection close.
async fn discard(mut body: Incoming, deadline: Instant, limit: u64) {
    use http_body_util::BodyExt;
    let mut read = 0u64;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return,
            Ok(Some(Err(_))) | Err(_) => return,
        };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > limit {
                tracing::debug!(limit, "request body over the discard limit; closing");
                return;
            }
        }
    }
}
