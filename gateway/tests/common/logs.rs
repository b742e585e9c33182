//! One log subscriber for the whole test process, at trace level, that
//! keeps lines only while some test holds a [`Capture`]: tests that search
//! the logs for secrets see everything logged meanwhile (their own lines
//! and those of tests running beside them), and the rest of the suite does
//! not pay for formatting trace lines nobody reads.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// How many captures are running, read by the filter without a lock.
static CAPTURING: AtomicUsize = AtomicUsize::new(0);
/// The same count, and the lines kept, changed together under the lock.
static KEPT: Mutex<(usize, Vec<u8>)> = Mutex::new((0, Vec::new()));

/// The lock, also after a test panicked holding it: one failing test must
/// not fail the others that capture.
fn kept() -> MutexGuard<'static, (usize, Vec<u8>)> {
    KEPT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lines are kept from its start until it is dropped.
pub struct Capture {
    from: usize,
}

/// Starts keeping log lines, installing the subscriber on first use.
pub fn capture() -> Capture {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(|| Sink)
            .with_ansi(false)
            .with_filter(filter_fn(|_| CAPTURING.load(Ordering::Relaxed) > 0));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("the only log subscriber of the test process");
    });
    let mut kept = kept();
    kept.0 += 1;
    CAPTURING.store(kept.0, Ordering::Relaxed);
    Capture { from: kept.1.len() }
}

impl Capture {
    /// Everything logged since this capture started.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&kept().1[self.from..]).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let mut kept = kept();
        kept.0 -= 1;
        CAPTURING.store(kept.0, Ordering::Relaxed);
        if kept.0 == 0 {
            kept.1.clear();
        }
    }
}

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = kept();
        if kept.0 > 0 {
            kept.1.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
