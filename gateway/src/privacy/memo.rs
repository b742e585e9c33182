//! What the detectors found in a text, remembered across requests.
//!
//! Applications send the same long texts with every request: a system
//! prompt, a tool's JSON schema, the earlier turns of a conversation.
//! Their scan is the dearest part of classifying a request (tens of
//! microseconds a kilobyte), and its outcome depends only on the text and
//! the rule set. So the detectors each text of [`MIN_LEN`] bytes or more
//! fired are kept under the rule set's number and the text's SHA-256, in
//! one cache for the process, bounded in entries and admitted by
//! frequency (`moka`'s TinyLFU): a flood of distinct texts does not push
//! out the prompts every request repeats.
//!
//! Only the digest is kept, never the text: nothing a client sent stays in
//! memory longer for it, and a collision, which would give one text
//! another's findings, would take a break of SHA-256. A rule set that
//! changes is a new rule set with a new number, so nothing it did not scan
//! is taken for its findings; the old entries age out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use moka::sync::Cache;
use sha2::{Digest, Sha256};

/// Texts shorter than this are scanned each time: their scan costs about
/// what the digest and the lookup do.
pub(super) const MIN_LEN: usize = 32;

/// At most this many texts' findings are kept (a few megabytes).
const ENTRIES: u64 = 16_384;

/// A rule set's number and a text's digest.
pub(super) type Key = (u64, [u8; 32]);

static FOUND: LazyLock<Cache<Key, Arc<[usize]>>> = LazyLock::new(|| Cache::new(ENTRIES));

/// Whether findings are remembered (`privacy_memo` in the configuration).
static ON: AtomicBool = AtomicBool::new(true);

/// Turns remembering on or off for the process; off, every text is scanned
/// each time, and what was remembered is forgotten.
pub fn remember_findings(on: bool) {
    ON.store(on, Ordering::Relaxed);
    if !on {
        FOUND.invalidate_all();
    }
}

/// Whether findings are remembered.
pub(super) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The key of `text` scanned by rule set `rules`.
pub(super) fn key(rules: u64, text: &str) -> Key {
    (rules, Sha256::digest(text.as_bytes()).into())
}

/// The detectors found in the text of `key`, if remembered.
pub(super) fn get(key: &Key) -> Option<Arc<[usize]>> {
    FOUND.get(key)
}

/// Remembers the detectors `found` in the text of `key`.
pub(super) fn insert(key: Key, found: Arc<[usize]>) {
    FOUND.insert(key, found);
}
