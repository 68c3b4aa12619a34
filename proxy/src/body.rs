//! The one body type the proxy sends, in both directions: a streamed
//! [`Incoming`] passed through chunk by chunk (never buffered whole) or a
//! short text the proxy wrote itself. It counts the bytes that pass for the
//! audit record and keeps the [`Exchange`] alive until the body is done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::audit::Exchange;

/// Which counter the bytes go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to origin (request bodies).
    Up,
    /// Origin to client (response bodies).
    Down,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Incoming),
}

pub struct ProxyBody {
    kind: Kind,
    meter: Option<(Arc<Exchange>, Direction)>,
    /// The stream reached its end (or failed, which is recorded then).
    finished: bool,
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            meter: None,
            finished: false,
        }
    }

    pub fn text(text: String) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(Bytes::from(text))),
            meter: None,
            finished: false,
        }
    }

    pub fn stream(body: Incoming) -> Self {
        ProxyBody {
            kind: Kind::Stream(body),
            meter: None,
            finished: false,
        }
    }

    /// Counts this body's bytes into `exchange` (and keeps it alive).
    pub fn metered(mut self, exchange: Arc<Exchange>, direction: Direction) -> Self {
        self.meter = Some((exchange, direction));
        self
    }

    fn count(&self, n: usize) {
        if let Some((ex, dir)) = &self.meter {
            let n = n as u64;
            match dir {
                Direction::Up => ex.add_up(n),
                Direction::Down => ex.add_down(n),
            }
        }
    }
}

/// How a request body from the client failed on its way through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadFailure {
    #[error("the client closed the connection before its request body was complete")]
    Aborted,
    #[error("the request body from the client is malformed: {0}")]
    Malformed(String),
}

impl UploadFailure {
    /// Classifies the error of a client's body stream (hyper's "error
    /// reading a body from connection", with an I/O error as its cause:
    /// end of file for a body cut short, invalid data for bad framing).
    pub fn of(e: &hyper::Error) -> UploadFailure {
        let mut causes = Vec::new();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) {
                    return UploadFailure::Aborted;
                }
            }
            causes.push(c.to_string());
            cause = c.source();
        }
        if e.is_incomplete_message() {
            return UploadFailure::Aborted;
        }
        UploadFailure::Malformed(match causes.is_empty() {
            true => e.to_string(),
            false => causes.join(": "),
        })
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count(data.len());
            }
        }
        match &polled {
            Poll::Ready(None) => this.finished = true,
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                match &this.meter {
                    Some((ex, Direction::Up)) => ex.set_error(UploadFailure::of(e).to_string()),
                    Some((ex, Direction::Down)) => {
                        ex.set_error(format!("response body transfer failed: {e}"))
                    }
                    None => {}
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    /// A streamed body dropped before its end: the client (or, for request
    /// bodies, the origin) went away mid-transfer.
    fn drop(&mut self) {
        if let (Kind::Stream(body), Some((ex, dir))) = (&self.kind, &self.meter) {
            if !self.finished && !body.is_end_stream() {
                ex.set_error(match dir {
                    Direction::Up => "request body not completely forwarded",
                    Direction::Down => "response body not completely delivered",
                });
            }
        }
    }
}
