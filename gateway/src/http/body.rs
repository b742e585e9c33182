//! Reading a request's body: one reader for every route that takes one
//! (chat, the admin API, the dashboard's forms, worker heartbeats), so each
//! is bounded the same way.
//!
//! - A body declared longer than the limit (its `Content-Length`, which
//!   hyper reports as the body's exact size) is refused before any of it is
//!   read, and before `Expect: 100-continue` is answered.
//! - A body that grows past the limit while it arrives (chunked, or a
//!   length that lied) is refused at the limit: at most `limit` bytes are
//!   ever buffered.
//! - A body that does not arrive within the timeout (a client trickling a
//!   byte at a time) is refused instead of holding a connection and a
//!   buffer forever.
//!
//! Each route maps [`BodyError`] onto its own error type, so every answer
//! keeps the route's shape with the right status: 413, 408 or 400.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// 413: declared or found longer than the limit (in bytes).
    #[error("Request body is larger than {0} bytes.")]
    TooLarge(usize),
    /// 408: not received within the timeout.
    #[error("The request body was not received in time.")]
    Timeout,
    /// 400: the connection failed or the framing was broken mid-body.
    #[error("The request body could not be read.")]
    Unreadable,
}

impl BodyError {
    #[must_use]
    pub fn status(self) -> http::StatusCode {
        match self {
            BodyError::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => http::StatusCode::REQUEST_TIMEOUT,
            BodyError::Unreadable => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The OpenAI `code` of a size or time refusal; an unreadable body
    /// takes the route's own code for a bad body.
    #[must_use]
    pub fn code(self) -> Option<&'static str> {
        match self {
            BodyError::TooLarge(_) => Some("request_too_large"),
            BodyError::Timeout => Some("request_timeout"),
            BodyError::Unreadable => None,
        }
    }
}

/// The whole of `body`, at most `limit` bytes, within `within`.
pub async fn read(body: Body, limit: usize, within: Duration) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Unreadable),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::stream;
    use http_body_util::StreamBody;
    use hyper::body::{Frame, SizeHint};

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A body of `chunks`, with `declared` as its exact size when given
    /// (as hyper reports a `Content-Length`), else of unknown size.
    fn body(chunks: Vec<&'static [u8]>, declared: Option<u64>) -> Body {
        let frames = stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        match declared {
            None => Body::new(StreamBody::new(frames)),
            Some(n) => Body::new(Sized {
                inner: StreamBody::new(frames),
                size: n,
            }),
        }
    }

    /// A body whose size hint is what its sender declared.
    struct Sized<B> {
        inner: B,
        size: u64,
    }

    impl<B: HttpBody + Unpin> HttpBody for Sized<B> {
        type Data = B::Data;
        type Error = B::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            std::pin::Pin::new(&mut self.inner).poll_frame(cx)
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.size)
        }
    }

    #[tokio::test]
    async fn reads_a_body_within_its_limits() {
        let read = read(body(vec![b"ab", b"cd"], Some(4)), 4, SECOND).await;
        assert_eq!(read, Ok(Bytes::from_static(b"abcd")));
        let read = super::read(body(vec![b"ab", b"cd"], None), 4, SECOND).await;
        assert_eq!(read, Ok(Bytes::from_static(b"abcd")));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        // The stream would fail if polled: refusing must not read it.
        let never = Body::new(Sized {
            inner: StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>()),
            size: 5,
        });
        let started = std::time::Instant::now();
        assert_eq!(read(never, 4, SECOND).await, Err(BodyError::TooLarge(4)));
        assert!(started.elapsed() < SECOND);
    }

    #[tokio::test]
    async fn a_body_that_grows_past_the_limit_is_refused() {
        let read = read(body(vec![b"abc", b"de"], None), 4, SECOND).await;
        assert_eq!(read, Err(BodyError::TooLarge(4)));
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_times_out() {
        let slow = Body::new(StreamBody::new(stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >()));
        let read = read(slow, 4, Duration::from_millis(20)).await;
        assert_eq!(read, Err(BodyError::Timeout));
    }

    #[tokio::test]
    async fn a_broken_body_is_unreadable() {
        let broken = Body::new(StreamBody::new(stream::iter([Err::<
            Frame<Bytes>,
            std::io::Error,
        >(
            std::io::Error::other("reset"),
        )])));
        assert_eq!(read(broken, 4, SECOND).await, Err(BodyError::Unreadable));
    }
}
