//! Paces a prebuilt SSE body: events go out at the time to first token and
//! then at the decode rate, and a scenario may abort or stall the stream
//! after a number of events. Events that are due together leave as one
//! slice of the shared buffer, so an unpaced stream costs one write.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::SseBody;
use super::stats::InFlight;

/// When each token is released and where the stream breaks.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Delay of the first event (and of a non-streaming answer's start).
    pub ttft: Duration,
    /// Tokens per second after the first; 0 means no delay.
    pub tokens_per_second: f64,
    /// Tokens in the answer.
    pub tokens: u32,
    /// Abort the connection after this many events.
    pub drop_after: Option<u32>,
    /// Go silent after this many events.
    pub stall_after: Option<u32>,
}

impl Pacing {
    /// Offset from the request's arrival at which token `k` (from 0) is due.
    pub fn token_due(&self, k: u32) -> Duration {
        if self.tokens_per_second <= 0.0 || k == 0 {
            return self.ttft;
        }
        self.ttft + Duration::from_secs_f64(f64::from(k) / self.tokens_per_second)
    }

    /// Offset at which the whole answer is ready (the last token's due time).
    pub fn done_due(&self) -> Duration {
        self.token_due(self.tokens.saturating_sub(1))
    }

    /// Offset at which SSE event `i` is due: event 0 is the role chunk, sent
    /// with the first token; the events after the last token follow it at once.
    fn event_due(&self, i: usize) -> Duration {
        let token = u32::try_from(i.saturating_sub(1)).unwrap_or(u32::MAX);
        self.token_due(token.min(self.tokens.saturating_sub(1)))
    }
}

struct State {
    body: SseBody,
    pacing: Pacing,
    start: Instant,
    /// Next event to send.
    next: usize,
    /// Set once the stream has failed on purpose, so it is not polled on.
    dead: bool,
    shutdown: CancellationToken,
    /// Dropped with the stream, which ends the request's in-flight count.
    guard: InFlight,
}

impl Drop for State {
    fn drop(&mut self) {
        if self.next >= self.body.ends.len() {
            self.guard.stats().stream_completed();
        } else {
            self.guard.stats().stream_aborted();
        }
    }
}

/// The paced body stream. An `Err` item makes the server abort the
/// connection, which is how a broken upstream looks to a client.
pub(crate) fn paced(
    body: SseBody,
    pacing: Pacing,
    start: Instant,
    shutdown: CancellationToken,
    guard: InFlight,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = State {
        body,
        pacing,
        start,
        next: 0,
        dead: false,
        shutdown,
        guard,
    };
    futures::stream::unfold(state, |mut st| async move {
        let events = st.body.ends.len();
        if st.dead || st.next >= events {
            return None;
        }
        let limit = |n: Option<u32>| n.map_or(usize::MAX, |n| n as usize);
        if st.next >= limit(st.pacing.drop_after) {
            // The server flushes what it has written only when the body is
            // pending; failing right after a chunk would discard that chunk
            // with the connection. One pending poll lets it reach the client.
            tokio::task::yield_now().await;
            st.dead = true;
            return Some((Err(io::Error::other("stream dropped by the mock")), st));
        }
        if st.next >= limit(st.pacing.stall_after) {
            st.shutdown.cancelled().await;
            st.dead = true;
            return Some((Err(io::Error::other("mock shutting down")), st));
        }
        let due = st.start + st.pacing.event_due(st.next);
        // tokio's timer rounds up to whole milliseconds, so even a deadline
        // already past would cost up to 1 ms: only sleep for a future one.
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = st.shutdown.cancelled() => {
                    st.dead = true;
                    return Some((Err(io::Error::other("mock shutting down")), st));
                }
            }
        }
        let stop = events
            .min(limit(st.pacing.drop_after))
            .min(limit(st.pacing.stall_after));
        let elapsed = st.start.elapsed();
        let mut end = st.next + 1;
        while end < stop && st.pacing.event_due(end) <= elapsed {
            end += 1;
        }
        let from = st.next.checked_sub(1).map_or(0, |i| st.body.ends[i]);
        let chunk = st.body.bytes.slice(from..st.body.ends[end - 1]);
        st.next = end;
        Some((Ok(chunk), st))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_follow_tokens() {
        let pacing = Pacing {
            ttft: Duration::from_millis(100),
            tokens_per_second: 10.0,
            tokens: 3,
            drop_after: None,
            stall_after: None,
        };
        let ms = |i| pacing.event_due(i).as_millis();
        // Role chunk and token 0 at TTFT, then 100 ms per token, then the
        // finish, usage and [DONE] events right after the last token.
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(5)],
            [100, 100, 200, 300, 300, 300]
        );
        assert_eq!(pacing.done_due().as_millis(), 300);
    }

    #[test]
    fn unpaced_answers_are_due_at_ttft() {
        let pacing = Pacing {
            ttft: Duration::ZERO,
            tokens_per_second: 0.0,
            tokens: 0,
            drop_after: None,
            stall_after: None,
        };
        assert_eq!(pacing.event_due(5), Duration::ZERO);
        assert_eq!(pacing.done_due(), Duration::ZERO);
    }
}
