//! What the detectors found in a text, remembered across requests.
//!
//! Applications send the same long texts with every request: a system
//! prompt, a tool's JSON schema, the earlier turns of a conversation.
//! Their scan is the dearest part of classifying a request (tens of
//! microseconds a kilobyte), and its outcome depends only on the text and
//! the rule set. So a [`Memo`] keeps the detectors each text of
//! [`MIN_LEN`] bytes or more fired, under the rule set's number and the
//! text's SHA-256, bounded in entries and admitted by frequency (`moka`'s
//! TinyLFU): a flood of distinct texts does not push out the prompts every
//! request repeats. The gateway's state holds one (`privacy_memo` in the
//! configuration); without one, every text is scanned each time.
//!
//! Only the digest is kept, never the text: nothing a client sent stays in
//! memory longer for it, and a collision, which would give one text
//! another's findings, would take a break of SHA-256. A rule set that
//! changes is a new rule set with a new number, so nothing it did not scan
//! is taken for its findings; the old entries age out.

use std::sync::Arc;

use moka::sync::Cache;
use sha2::{Digest, Sha256};

/// Texts shorter than this are scanned each time. A miss costs the digest,
/// the lookup and the insert (about 1.5 µs on an AVX2-only EPYC), paid by
/// every text never seen again: with a threshold of 32 bytes, a small chat
/// body with a new question took 21 µs to classify instead of 11. A
/// kilobyte takes 25 to 30 µs to scan.
pub(super) const MIN_LEN: usize = 1024;

/// At most this many texts' findings are kept (a few megabytes).
const ENTRIES: u64 = 16_384;

/// The findings of texts scanned before, per rule set. Cloning it shares
/// it.
#[derive(Clone)]
pub struct Memo {
    /// A rule set's number and a text's digest → the detectors found.
    found: Cache<(u64, [u8; 32]), Arc<[usize]>>,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo {
            found: Cache::new(ENTRIES),
        }
    }
}

impl Memo {
    /// What rule set `rules` found in `text`: remembered, or `scan`ned and
    /// remembered if the text is [`MIN_LEN`] bytes or more.
    pub(super) fn found_or(
        &self,
        rules: u64,
        text: &str,
        scan: impl FnOnce() -> Arc<[usize]>,
    ) -> Arc<[usize]> {
        if text.len() < MIN_LEN {
            return scan();
        }
        let key = (rules, Sha256::digest(text.as_bytes()).into());
        if let Some(found) = self.found.get(&key) {
            return found;
        }
        let found = scan();
        self.found.insert(key, Arc::clone(&found));
        found
    }

    /// Whether `text`'s findings by rule set `rules` are remembered.
    #[cfg(test)]
    pub(super) fn holds(&self, rules: u64, text: &str) -> bool {
        self.found
            .contains_key(&(rules, Sha256::digest(text.as_bytes()).into()))
    }
}
