//! Which detectors can match a text: one pass that gives up rather than
//! slow down.
//!
//! All the detectors together make one large automaton. On ordinary text
//! its lazy DFA reaches few states and the pass costs a few nanoseconds a
//! byte. On noise (random base64 or hex, digits and punctuation mixed with
//! spaces) nearly every byte reaches a new state: `regex`'s `RegexSet`
//! then falls back to simulating the whole automaton, over a microsecond a
//! byte, a second and a half of CPU for one 1 MB body. Each detector alone
//! stays small and fast on the same text.
//!
//! So the pass runs on a lazy DFA told to give up when its cache stops
//! paying (filled once at under ten bytes a state: `regex` itself waits
//! for three fills before its fallback, but each fill of this automaton's
//! large states costs about a millisecond, and a request that gives up
//! starts the next one from an empty cache), window by window, and once it
//! has given up or cost more than the request's budget allows
//! ([`super::rules::ScanBudget`]), the rest of the request's texts are run
//! through every detector alone ([`super::rules::RuleSet::scan`]). The
//! findings are the same either way; only the cost differs.

use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::Arc;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::pool::Pool;
use regex_automata::{Input, MatchKind, PatternSet};

/// The lazy DFA's cache, per thread using it.
const CACHE_BYTES: usize = 2 << 20;

type NewCache = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

pub(super) struct Prefilter {
    dfa: Arc<DFA>,
    caches: Pool<Cache, NewCache>,
}

impl Prefilter {
    /// One automaton for `patterns`; `None` if it cannot be built (a
    /// pattern the lazy DFA does not support): every text is then run
    /// through every detector.
    pub(super) fn new<'p>(patterns: impl IntoIterator<Item = &'p str>) -> Option<Prefilter> {
        let patterns: Vec<&str> = patterns.into_iter().collect();
        let config = DFA::config()
            .match_kind(MatchKind::All)
            .cache_capacity(CACHE_BYTES)
            .minimum_cache_clear_count(Some(0))
            .minimum_bytes_per_state(Some(10))
            // A Unicode `\b` (an operator's pattern that could not be made
            // ASCII) quits on non-ASCII text instead of failing the build.
            .unicode_word_boundary(true);
        let dfa = Arc::new(
            DFA::builder()
                .configure(config)
                .build_many(&patterns)
                .ok()?,
        );
        let for_caches = Arc::clone(&dfa);
        let new: NewCache = Box::new(move || for_caches.create_cache());
        Some(Prefilter {
            dfa,
            caches: Pool::new(new),
        })
    }

    /// The patterns that match somewhere in `text`, with the bytes of new
    /// states the search built into its cache, or `None` if the pass gave
    /// up (or quit on a byte it cannot handle).
    pub(super) fn matches(&self, text: &str) -> Option<(PatternSet, usize)> {
        let mut cache = self.caches.get();
        let mut set = PatternSet::new(self.dfa.pattern_len());
        let (clears, before) = (cache.clear_count(), cache.memory_usage());
        let found = self
            .dfa
            .try_which_overlapping_matches(&mut cache, &Input::new(text), &mut set);
        if found.is_err() {
            // The count of cache clears outlives a search: start the next
            // text afresh.
            cache.reset(&self.dfa);
            return None;
        }
        // Each clear dropped a cache's worth of states built before it.
        let filled = cache.clear_count().saturating_sub(clears) * CACHE_BYTES;
        let built = (cache.memory_usage() + filled).saturating_sub(before);
        Some((set, built))
    }
}
