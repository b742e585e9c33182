//! Operator rules and their compiled form.
//!
//! Rule rows come from the store (global ones with no tenant, then the
//! tenant's own); [`RuleSet::compile`] folds them over the builtin table and
//! compiles every pattern once. Later rows win, so a tenant row overrides a
//! global row for the same builtin.

use regex::{Regex, RegexBuilder};
use regex_automata::{PatternID, PatternSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use super::disguise::{suspected, Disguise};
use super::memo::Memo;
use super::normalize::{look_alikes_folded, normalize};
use super::prefilter::Prefilter;
use super::shifted::{words_of, Shift, ShiftGate};
use super::{apart, morse, reversed, spaced, spelled};
use serde::{Deserialize, Serialize};

use super::builtin::{Validator, BUILTINS, BUILTIN_NAMES};
use super::Class;

/// Operator regexes are compiled with this size limit so a pathological
/// pattern is rejected at `rule add` time instead of eating memory. The
/// `regex` crate already guarantees linear-time matching.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// How much of a text the prefilter reads at once. Windows overlap by
/// [`PREFILTER_OVERLAP`], more than any builtin finding spans (the longest,
/// a credential after its label or a card with separators, is a few
/// hundred bytes; an unbounded run, a long card or secret, matches in any
/// window it fills), so a match is never lost between two.
const PREFILTER_WINDOW: usize = 16 << 10;
const PREFILTER_OVERLAP: usize = 1 << 10;

/// `text` in windows of [`PREFILTER_WINDOW`] bytes overlapping by
/// [`PREFILTER_OVERLAP`], cut at character boundaries.
fn windows(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut end = (start + PREFILTER_WINDOW).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let window = &text[start..end];
        done = end == text.len();
        if !done {
            start = end.saturating_sub(PREFILTER_OVERLAP).max(start + 1);
            while !text.is_char_boundary(start) {
                start += 1;
            }
        }
        Some(window)
    })
}

/// A rewriting of a text that the detectors see too, behind a gate: a
/// pattern in the prefilter's one pass that matches wherever the rewriting
/// could change anything, compiled alone as well for text the one pass
/// gave up on (`None` if it could not be, as the unit tests rule out: the
/// text is then rewritten anyway).
struct View {
    gate: fn() -> &'static str,
    gate_alone: LazyLock<Option<Regex>>,
    rewrite: fn(&str) -> Vec<String>,
    /// The detectors that read the rewriting (`None`: every one).
    only: Option<&'static [&'static str]>,
}

impl View {
    fn gate_matches(&self, text: &str) -> bool {
        self.gate_alone
            .as_ref()
            .is_none_or(|gate| gate.is_match(text))
    }
}

/// The rewritings every text is scanned in as well.
static VIEWS: [View; 5] = [
    View {
        gate: spelled::gate,
        gate_alone: LazyLock::new(|| Regex::new(spelled::gate()).ok()),
        rewrite: spelled::digits,
        only: None,
    },
    View {
        gate: || spaced::GATE,
        gate_alone: LazyLock::new(|| Regex::new(spaced::GATE).ok()),
        rewrite: spaced::joined,
        only: None,
    },
    View {
        gate: || reversed::GATE,
        gate_alone: LazyLock::new(|| Regex::new(reversed::GATE).ok()),
        rewrite: reversed::turned,
        only: Some(reversed::DETECTORS),
    },
    View {
        gate: || apart::GATE,
        gate_alone: LazyLock::new(|| Regex::new(apart::GATE).ok()),
        rewrite: apart::joined,
        only: Some(apart::DETECTORS),
    },
    View {
        gate: || morse::GATE,
        gate_alone: LazyLock::new(|| Regex::new(morse::GATE).ok()),
        rewrite: morse::letters,
        only: None,
    },
];

/// Compiles what [`RuleSet::scan`] compiles on first use: the views'
/// gates alone, asked once the one pass has given up.
pub(super) fn warm_up() {
    for view in &VIEWS {
        LazyLock::force(&view.gate_alone);
    }
    super::disguise::warm_up();
}

/// What the one pass has cost a request so far, in work rather than time:
/// the bytes it read and the bytes of lazy DFA states it built for them.
/// Reading costs a few nanoseconds a byte; building states tens of
/// nanoseconds a byte of state, and text that keeps building them (hex,
/// noise) makes the pass dearer than each detector alone. Past
/// [`OnePass::allowance`], or once the pass has given up on a text of the
/// request ([`super::prefilter`]), the rest of the request's texts go
/// through each detector alone. Measured in work, not by a clock, so the
/// path a request takes depends on its texts and the cache, never on how
/// busy the machine is.
#[derive(Debug, Default)]
pub(super) struct OnePass {
    read: usize,
    built: usize,
    given_up: bool,
}

impl OnePass {
    /// Half a megabyte of states (what a cold cache builds on the first
    /// requests, a few milliseconds), and four bytes of state a byte read.
    /// Prose and accented text build under a fiftieth of a byte of state a
    /// byte read once the cache is warm, digit runs about one and a half,
    /// hex and noise seven to nine.
    fn allowance(&self) -> usize {
        (512 << 10) + 4 * self.read
    }
}

/// What a privacy rule row does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleSpec {
    /// Switches a builtin detector on or off, optionally changing the class
    /// it raises to.
    Builtin {
        detector: String,
        enabled: bool,
        class: Option<Class>,
    },
    /// An operator regex: any match raises the request to `class`.
    Regex {
        name: String,
        pattern: String,
        class: Class,
    },
}

/// A stored privacy rule: global when `tenant_id` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyRule {
    pub id: String,
    pub tenant_id: Option<String>,
    pub spec: RuleSpec,
}

/// Why a rule cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("unknown builtin detector `{0}`")]
    UnknownBuiltin(String),
    #[error("rule name `{0}` is reserved for a builtin detector")]
    ReservedName(String),
    #[error("rule `{name}` has an invalid pattern: {reason}")]
    BadPattern { name: String, reason: String },
}

impl RuleSpec {
    /// Checks a rule before it is stored, so a bad row never reaches the
    /// request path.
    pub fn validate(&self) -> Result<(), RuleError> {
        match self {
            RuleSpec::Builtin { detector, .. } if !BUILTIN_NAMES.contains(&detector.as_str()) => {
                Err(RuleError::UnknownBuiltin(detector.clone()))
            }
            RuleSpec::Builtin { .. } => Ok(()),
            RuleSpec::Regex { name, .. } if BUILTIN_NAMES.contains(&name.as_str()) => {
                Err(RuleError::ReservedName(name.clone()))
            }
            // Its disguised twins too, which the rule set compiles with it.
            RuleSpec::Regex { name, pattern, .. } => {
                compile_one(name, pattern)?;
                for twin in Disguise::ALL.iter().filter_map(|d| d.pattern(pattern)) {
                    compile_one(name, &twin)?;
                }
                Ok(())
            }
        }
    }
}

/// Compiles a pattern with its word boundaries made ASCII ones (see
/// [`ascii_word_boundaries`]); a pattern the rewrite cannot take is
/// compiled as written.
fn compile_one(name: &str, pattern: &str) -> Result<Regex, RuleError> {
    let build = |p: &str| RegexBuilder::new(p).size_limit(PATTERN_SIZE_LIMIT).build();
    ascii_word_boundaries(pattern)
        .and_then(|ascii| build(&ascii).ok())
        .map_or_else(|| build(pattern), Ok)
        .map_err(|e| RuleError::BadPattern {
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

/// `pattern` with every word boundary (`\b`, `\b{start}`, `\<`, …) made an
/// ASCII one, as in `(?-u:\b)`. A Unicode boundary sees none between an
/// accented letter and a code glued to it (`cléPRJ-1234`), so a rule
/// written with `\b` would let that text leave unseen; an ASCII one counts
/// any letter outside ASCII as a boundary, which can only make a rule match
/// more (the direction privacy fails in). It also keeps the scan on the
/// regex crate's fast engine for text outside ASCII. `\B` stays as written
/// (an ASCII `\B` could match inside a character). `None` when the pattern
/// does not parse; the regex compiler then reports why.
fn ascii_word_boundaries(pattern: &str) -> Option<String> {
    use regex_syntax::ast::{
        parse::Parser, print::Printer, AssertionKind, Ast, Flag, Flags, FlagsItem, FlagsItemKind,
        Group, GroupKind,
    };
    fn rewrite(ast: &mut Ast) {
        match ast {
            Ast::Assertion(a)
                if !matches!(
                    a.kind,
                    AssertionKind::StartLine
                        | AssertionKind::EndLine
                        | AssertionKind::StartText
                        | AssertionKind::EndText
                        | AssertionKind::NotWordBoundary
                ) =>
            {
                let span = a.span;
                let item = |kind| FlagsItem { span, kind };
                let assertion = std::mem::replace(ast, Ast::empty(span));
                *ast = Ast::group(Group {
                    span,
                    kind: GroupKind::NonCapturing(Flags {
                        span,
                        items: vec![
                            item(FlagsItemKind::Negation),
                            item(FlagsItemKind::Flag(Flag::Unicode)),
                        ],
                    }),
                    ast: Box::new(assertion),
                });
            }
            Ast::Repetition(r) => rewrite(&mut r.ast),
            Ast::Group(g) => rewrite(&mut g.ast),
            Ast::Alternation(a) => a.asts.iter_mut().for_each(rewrite),
            Ast::Concat(c) => c.asts.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    // The parser's default nesting limit bounds the recursion.
    let mut ast = Parser::new().parse(pattern).ok()?;
    rewrite(&mut ast);
    let mut out = String::new();
    Printer::new().print(&ast, &mut out).ok()?;
    Some(out)
}

struct Detector {
    name: String,
    regex: Regex,
    validate: Option<Validator>,
    class: Class,
    /// Its pattern's index in the one pass, or `None` if it always runs
    /// alone.
    in_pass: Option<usize>,
}

/// Builtins that run alone rather than in the one pass: the IBAN pattern's
/// counted repetition, in one automaton with the others, makes a new state
/// at nearly every byte of hex or other letters and digits (1 KB of hex
/// cost 3 ms instead of 0.1), while alone it is small.
const ALONE: &[&str] = &["iban"];

/// The shift gate of the builtins' words alone, which every rule set
/// without an operator's words shares.
static BUILTIN_SHIFTS: LazyLock<Option<Arc<ShiftGate>>> =
    LazyLock::new(|| ShiftGate::new(&[]).map(Arc::new));

/// The number the next rule set compiled gets.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Precompiled detectors for one tenant. Cheap to share behind an `Arc`;
/// rebuild it when the rule rows change.
pub struct RuleSet {
    /// One pass over the text says which detectors can match at all, so
    /// the per-detector regexes only run on texts that need them (`None`:
    /// the detectors' automaton could not be built, every detector runs).
    prefilter: Option<Prefilter>,
    /// This rule set's own number, under which a [`Memo`] keeps what its
    /// detectors found.
    id: u64,
    /// The index of the views' first gate in the one pass.
    gates_from: usize,
    detectors: Vec<Detector>,
    /// Finds the builtins' and the operator's words in a shift cipher
    /// (`None`: it could not be built, as the unit tests rule out).
    shifts: Option<Arc<ShiftGate>>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.detectors.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("RuleSet")
            .field("detectors", &names)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// Builds the detector set: builtins with their default classes, then
    /// each rule applied in order.
    pub fn compile(rules: &[RuleSpec]) -> Result<RuleSet, RuleError> {
        let mut builtin_state: Vec<(bool, Class)> =
            BUILTINS.iter().map(|b| (true, b.class)).collect();
        let mut custom: Vec<(&str, &str, Class)> = Vec::new();
        for rule in rules {
            rule.validate()?;
            match rule {
                RuleSpec::Builtin {
                    detector,
                    enabled,
                    class,
                } => {
                    for (b, state) in BUILTINS.iter().zip(builtin_state.iter_mut()) {
                        if b.name == detector {
                            state.0 = *enabled;
                            state.1 = class.unwrap_or(b.class);
                        }
                    }
                }
                RuleSpec::Regex {
                    name,
                    pattern,
                    class,
                } => {
                    custom.retain(|(n, _, _)| n != name);
                    custom.push((name, pattern, *class));
                }
            }
        }
        let mut detectors = Vec::new();
        let mut gates_from = 0;
        for (b, (enabled, class)) in BUILTINS.iter().zip(builtin_state) {
            if enabled {
                let alone = ALONE.contains(&b.name);
                detectors.push(Detector {
                    name: b.name.to_owned(),
                    regex: compile_one(b.name, b.pattern)?,
                    validate: b.validate,
                    class,
                    in_pass: (!alone).then_some(gates_from),
                });
                gates_from += usize::from(!alone);
            }
        }
        // The operator's patterns always run alone: one may need more than
        // the one pass's window overlap. Each has a twin for each disguise
        // it does not read the same in, which the builtins' gates know
        // nothing of ([`super::disguise`]).
        let words: Vec<String> = custom.iter().flat_map(|(_, p, _)| words_of(p)).collect();
        for (name, pattern, class) in custom {
            let twins = Disguise::ALL.map(|d| d.pattern(pattern));
            for pattern in
                std::iter::once(pattern).chain(twins.iter().flatten().map(String::as_str))
            {
                detectors.push(Detector {
                    name: name.to_owned(),
                    regex: compile_one(name, pattern)?,
                    validate: None,
                    class,
                    in_pass: None,
                });
            }
        }
        // The builtins' gate stands in for one with the operator's words
        // too if that could not be built.
        let shifts = (!words.is_empty())
            .then(|| ShiftGate::new(&words).map(Arc::new))
            .flatten()
            .or_else(|| BUILTIN_SHIFTS.clone());
        let prefilter = Prefilter::new(
            detectors
                .iter()
                .filter(|d| d.in_pass.is_some())
                .map(|d| d.regex.as_str())
                .chain(VIEWS.iter().map(|v| (v.gate)())),
        );
        Ok(RuleSet {
            prefilter,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gates_from,
            detectors,
            shifts,
        })
    }

    /// The builtin detectors with their default classes, compiled once per
    /// process (`None` only if a builtin pattern failed to compile, which
    /// the unit tests rule out).
    #[must_use]
    pub fn builtins() -> Option<&'static RuleSet> {
        static BUILTINS_ONLY: std::sync::LazyLock<Option<RuleSet>> =
            std::sync::LazyLock::new(|| RuleSet::compile(&[]).ok());
        BUILTINS_ONLY.as_ref()
    }

    /// The index of every detector with at least one validated hit in
    /// `text`, or in a rewriting of it ([`VIEWS`]: digits
    /// spelt as words or look-alikes read as digits, words written a
    /// character at a time joined, addresses and card numbers written
    /// backwards turned, a card number's groups apart joined, the two of
    /// them read by their detectors only; Morse code read as letters), or
    /// in it with a disguise taken off
    /// (ROT13, written backwards) where it holds a detector's word in that
    /// disguise ([`super::disguise`]), or a word of the builtins or the
    /// operator's rules in a shift cipher (Caesar, Atbash, ROT47;
    /// [`super::shifted`]). The one-pass prefilter
    /// ([`super::prefilter`]) says which builtins can match and which
    /// rewritings have anything to rewrite; once it has given up on a text
    /// of the request, or cost more than [`OnePass`] allows, every detector
    /// runs on its own for the rest of the request.
    pub(super) fn scan(&self, text: &str, pass: &mut OnePass) -> Vec<usize> {
        self.scan_undoing(text, pass, true)
    }

    /// [`RuleSet::scan`], and when `undo` is set, for each disguise whose
    /// gate finds a detector's word disguised in `text`, the same again of
    /// `text` with the disguise taken off (and not undone once more: a
    /// disguise undone twice is the text again).
    fn scan_undoing(&self, text: &str, pass: &mut OnePass, undo: bool) -> Vec<usize> {
        let candidates = self.prefiltered(text, pass);
        let in_candidates = |i: usize| {
            candidates
                .as_ref()
                .is_none_or(|set| PatternID::new(i).is_ok_and(|id| set.contains(id)))
        };
        let mut found = self.validated(text, |i| {
            self.detectors[i].in_pass.is_none_or(&in_candidates)
        });
        for (k, view) in VIEWS.iter().enumerate() {
            // The one pass's last patterns are the views' gates; alone, a
            // gate is asked only when needed.
            let gated = match &candidates {
                Some(_) => in_candidates(self.gates_from + k),
                None => view.gate_matches(text),
            };
            if gated {
                let reads = |i: usize| {
                    view.only
                        .is_none_or(|names| names.contains(&self.detectors[i].name.as_str()))
                };
                for rewritten in (view.rewrite)(text) {
                    found.extend(self.validated(&rewritten, reads));
                    // Letters spaced apart in a disguise show their
                    // words only once joined.
                    if undo && view.only.is_none() {
                        for (disguise, stretches) in
                            Disguise::ALL.into_iter().zip(suspected(&rewritten))
                        {
                            for stretch in stretches {
                                let undone = disguise.undo(&rewritten[stretch]);
                                found.extend(self.validated(&undone, reads));
                            }
                        }
                        for (shift, stretch) in self.shifted(&rewritten, undo) {
                            found.extend(self.validated(&shift.undo(&rewritten[stretch]), reads));
                        }
                    }
                }
            }
        }
        let suspected = if undo {
            suspected(text)
        } else {
            Default::default()
        };
        for (disguise, stretches) in Disguise::ALL.into_iter().zip(suspected) {
            for stretch in stretches {
                // Look-alike letters are no letters to ROT13: they are
                // folded once the disguise is off, not before.
                let undone = disguise.undo(&text[stretch]);
                let folded = look_alikes_folded(&undone);
                for view in std::iter::once(undone.as_str()).chain(folded.as_deref()) {
                    found.extend(self.scan_undoing(view, pass, false));
                }
            }
        }
        for (shift, stretch) in self.shifted(text, undo) {
            found.extend(self.scan_undoing(&shift.undo(&text[stretch]), pass, false));
        }
        found
    }

    /// Where `text` may hold a word in a shift cipher ([`super::shifted`]),
    /// when `undo` is set.
    fn shifted(&self, text: &str, undo: bool) -> Vec<(Shift, Range<usize>)> {
        match &self.shifts {
            Some(gate) if undo => gate.suspected(text),
            _ => Vec::new(),
        }
    }

    /// The patterns the prefilter finds in `text`, window by window (see
    /// [`PREFILTER_WINDOW`]); `None` once the pass has given up or cost
    /// more than `pass` allows.
    fn prefiltered(&self, text: &str, pass: &mut OnePass) -> Option<PatternSet> {
        let prefilter = self.prefilter.as_ref().filter(|_| !pass.given_up)?;
        let mut found: Option<PatternSet> = None;
        for window in windows(text) {
            let matches = prefilter.matches(window);
            let Some(set) = matches.and_then(|(set, built)| {
                pass.read += window.len();
                pass.built += built;
                (pass.built <= pass.allowance()).then_some(set)
            }) else {
                pass.given_up = true;
                return None;
            };
            match &mut found {
                Some(all) => set.iter().for_each(|id| {
                    all.insert(id);
                }),
                None => found = Some(set),
            }
        }
        found
    }

    /// The detectors that `may_match` lets through with a validated hit in
    /// `text`.
    fn validated(&self, text: &str, may_match: impl Fn(usize) -> bool) -> Vec<usize> {
        self.detectors
            .iter()
            .enumerate()
            .filter(|(i, _)| may_match(*i))
            .filter(|(_, d)| {
                d.regex.find_iter(text).any(|m| match d.validate {
                    Some(validate) => validate(text, m.start(), m.end()),
                    None => true,
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The name of the `i`th detector and the class it raises a request to.
    pub(super) fn detector(&self, i: usize) -> Option<(&str, Class)> {
        self.detectors.get(i).map(|d| (d.name.as_str(), d.class))
    }

    /// The detectors that fire on `raw` ([`RuleSet::scan`] of its
    /// normalised text and of that text with look-alike letters folded),
    /// taken from `memo` or kept there: a system prompt or a tool's schema
    /// sent with every request is scanned once per rule set.
    pub(super) fn findings(
        &self,
        raw: &str,
        pass: &mut OnePass,
        memo: Option<&Memo>,
    ) -> Arc<[usize]> {
        let mut scan = || {
            let text = normalize(raw);
            let folded = look_alikes_folded(&text);
            let mut found: Vec<usize> = std::iter::once(text.as_ref())
                .chain(folded.as_deref())
                .flat_map(|view| self.scan(view, pass))
                .collect();
            found.sort_unstable();
            found.dedup();
            Arc::from(found)
        };
        match memo {
            Some(memo) => memo.found_or(self.id, raw, scan),
            None => scan(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{classify, Class};
    use super::*;

    /// The builtins that run alone are builtins, and still fire.
    #[test]
    fn detectors_alone_are_builtins_and_fire() {
        assert!(ALONE.iter().all(|n| BUILTIN_NAMES.contains(n)));
        let got = classify(
            ["pay to DE89 3704 0044 0532 0130 00"],
            Class::Public,
            None,
            RuleSet::builtins().unwrap(),
        );
        assert!(got.fired.iter().any(|f| f == "iban"), "{:?}", got.fired);
    }

    /// The one pass keeps going on text, stops on hex that keeps building
    /// states, and whatever it does the findings are the same: a count of
    /// work, not a clock, so the outcome is the same on any machine.
    #[test]
    fn the_pass_gives_up_on_noise_by_its_work_not_a_clock() {
        let prose = "The committee met on Tuesday to review the plan for the new \
                     library, and agreed to meet again after the holidays. "
            .repeat(1500);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let hex: String = (0..100_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                char::from(b"0123456789abcdef"[(state >> 60) as usize])
            })
            .collect();
        for (text, gives_up) in [(&prose, false), (&hex, true)] {
            let rules = RuleSet::compile(&[]).unwrap();
            let mut pass = OnePass::default();
            let in_pass = rules.scan(text, &mut pass);
            assert_eq!(
                pass.given_up, gives_up,
                "read {} built {}",
                pass.read, pass.built
            );
            let alone = rules.scan(
                text,
                &mut OnePass {
                    given_up: true,
                    ..OnePass::default()
                },
            );
            assert_eq!(in_pass, alone);
        }
        // A card in the noise is found once the pass has given up.
        let rules = RuleSet::compile(&[]).unwrap();
        let mut pass = OnePass::default();
        let found = rules.scan(&format!("{hex} card 4539 1488 0343 6467"), &mut pass);
        assert!(pass.given_up);
        let names: Vec<_> = found.iter().filter_map(|&i| rules.detector(i)).collect();
        assert!(names.iter().any(|(name, _)| *name == "card"), "{names:?}");
    }

    /// A long text's findings are remembered per rule set: the same from
    /// memory as from the scan, and never another rule set's.
    #[test]
    fn findings_are_remembered_per_rule_set() {
        let filler = "The committee met on Tuesday to review the plan. ".repeat(25);
        let text = &format!("{filler}Please forward the minutes to alice.jones@example.org.");
        let memo = Memo::default();
        let fired = |rules: &RuleSet, text: &str| {
            super::super::classify_with([text], Class::Public, None, rules, Some(&memo)).fired
        };
        let builtins = RuleSet::compile(&[]).unwrap();
        assert!(!memo.holds(builtins.id, text));
        assert_eq!(fired(&builtins, text), ["email"]);
        assert!(memo.holds(builtins.id, text), "a long text is remembered");
        assert_eq!(fired(&builtins, text), ["email"], "the same from memory");
        let without_email = RuleSet::compile(&[RuleSpec::Builtin {
            detector: "email".into(),
            enabled: false,
            class: None,
        }])
        .unwrap();
        assert!(fired(&without_email, text).is_empty());
        let with_rule = RuleSet::compile(&[RuleSpec::Regex {
            name: "minutes".into(),
            pattern: "(?i)minutes".into(),
            class: Class::Internal,
        }])
        .unwrap();
        assert_eq!(fired(&with_rule, text), ["email", "minutes"]);
        // A shorter text is scanned each time, not remembered.
        let short = "Please forward the minutes to alice.jones@example.org before Friday.";
        assert!(text.len() >= super::super::memo::MIN_LEN);
        assert!(short.len() < super::super::memo::MIN_LEN);
        assert_eq!(fired(&builtins, short), ["email"]);
        assert!(!memo.holds(builtins.id, short));
        // Without a memo nothing is kept.
        let other = &format!("{filler}Please forward the minutes to bob.jones@example.org.");
        assert_eq!(
            classify([other], Class::Public, None, &builtins).fired,
            ["email"]
        );
        assert!(!memo.holds(builtins.id, other));
    }

    /// Windows cover the text, overlap, cut at character boundaries, and
    /// end (an empty text is one empty window).
    #[test]
    fn windows_cover_the_text_and_overlap() {
        assert_eq!(windows("").collect::<Vec<_>>(), vec![""]);
        assert_eq!(windows("abc").collect::<Vec<_>>(), vec!["abc"]);
        let text = "é".repeat(3 * PREFILTER_WINDOW / 2);
        let got: Vec<&str> = windows(&text).collect();
        assert_eq!(got.len(), 4, "{}", got.len());
        assert!(got.iter().all(|w| w.len() <= PREFILTER_WINDOW + 1));
        assert!(got[0].starts_with('é') && got[3].ends_with('é'));
        let covered: usize = got.iter().map(|w| w.len()).sum::<usize>() - 3 * PREFILTER_OVERLAP;
        assert!(
            covered.abs_diff(text.len()) <= 3 * 2,
            "{covered} vs {}",
            text.len()
        );
    }

    /// An operator's rule reads its words in ROT13 and written backwards
    /// as well, and the builtins theirs, in full: a disguised banner is
    /// read with its letters spaced apart (a view of the undone text), a
    /// rule that reads the same disguised has no twin.
    #[test]
    fn rules_and_builtins_read_disguises() {
        let rules = RuleSet::compile(&[
            RuleSpec::Regex {
                name: "project".into(),
                pattern: r"(?i)\bproject\s+falcon\b".into(),
                class: Class::Internal,
            },
            RuleSpec::Regex {
                name: "ticket".into(),
                pattern: r"#[0-9]{6}".into(),
                class: Class::Internal,
            },
        ])
        .unwrap();
        let fired = |text: &str| classify([text], Class::Public, None, &rules).fired;
        assert_eq!(fired("about Cebwrpg Snypba"), ["project"]);
        assert_eq!(fired("about NOCLAF TCEJORP"), ["project"]);
        assert_eq!(fired("about project falcon"), ["project"]);
        assert_eq!(fired("about cebwrpg or tcejorp"), Vec::<String>::new());
        // In other shifts, through the words the rule spells out: ROT3,
        // Atbash, ROT47, ROT5 written backwards.
        for shifted in [
            "about Surmhfw Idofrq",
            "about KILQVXG UZOXLM",
            "about !C@;64E 72=4@?",
            "about sthqfk yhjotwu",
        ] {
            assert_eq!(fired(shifted), ["project"], "{shifted}");
        }
        // `#[0-9]{6}` backwards is `[0-9]{6}#`.
        assert_eq!(
            rules
                .detectors
                .iter()
                .filter(|d| d.name == "ticket")
                .count(),
            2
        );
        // Deep in a long text, only the stretch around the words is undone.
        let filler = "The committee met on Tuesday to review the plan. ".repeat(100);
        let long = format!("{filler}gur cnffjbeq vf uhagre2 {filler}");
        assert!(fired(&long).iter().any(|f| f == "secret"));
        for text in [
            "P B A S V Q R A G V N Y",
            "L A I T N E D I F N O C",
            "gur cnffjbeq vf uhagre2",
            "2retnuh si drowssap eht",
        ] {
            let got = fired(text);
            assert!(
                got.iter().any(|f| f == "marker" || f == "secret"),
                "{text}: {got:?}"
            );
        }
    }

    /// An operator's `\b` is an ASCII boundary: a project code glued to an
    /// accented word is still seen (with Unicode boundaries `cléPRJ-1234`
    /// went unseen), every boundary form is rewritten, and what cannot be
    /// rewritten still compiles as written.
    #[test]
    fn operator_word_boundaries_are_ascii() {
        let rule = |pattern: &str| {
            RuleSet::compile(&[RuleSpec::Regex {
                name: "project".into(),
                pattern: pattern.into(),
                class: Class::Confidential,
            }])
            .unwrap()
        };
        let class =
            |rules: &RuleSet, text: &str| classify([text], Class::Public, None, rules).class;
        let word = rule(r"\bPRJ-\d{4}\b");
        for text in [
            "PRJ-1234",
            "cléPRJ-1234",
            "PRJ-1234é",
            "«PRJ-1234»",
            "ñPRJ-1234ü",
        ] {
            assert_eq!(class(&word, text), Class::Confidential, "{text}");
        }
        for text in ["XPRJ-1234", "PRJ-12345", "PRJ-1234_"] {
            assert_eq!(class(&word, text), Class::Public, "{text}");
        }
        for pattern in [
            r"\b{start}PRJ\b{end}",
            r"\<PRJ\>",
            r"(?i:\bprj)",
            r"(?:\bPRJ)+",
        ] {
            assert_eq!(
                class(&rule(pattern), "éPRJ"),
                Class::Confidential,
                "{pattern}"
            );
        }
        assert_eq!(
            ascii_word_boundaries(r"^a\bb|\B$").as_deref(),
            Some(r"^a(?-u:\b)b|\B$")
        );
        assert_eq!(class(&rule(r"\BPRJ"), "xPRJ"), Class::Confidential);
        assert!(matches!(
            RuleSet::compile(&[RuleSpec::Regex {
                name: "bad".into(),
                pattern: r"\b(".into(),
                class: Class::Confidential,
            }]),
            Err(RuleError::BadPattern { .. })
        ));
    }

    #[test]
    fn builtin_toggle_and_class_override() {
        let off = RuleSet::compile(&[RuleSpec::Builtin {
            detector: "email".into(),
            enabled: false,
            class: None,
        }])
        .unwrap();
        assert!(classify(["a@b.io"], Class::Public, None, &off)
            .fired
            .is_empty());

        let raised = RuleSet::compile(&[RuleSpec::Builtin {
            detector: "email".into(),
            enabled: true,
            class: Some(Class::Confidential),
        }])
        .unwrap();
        assert_eq!(
            classify(["a@b.io"], Class::Public, None, &raised).class,
            Class::Confidential
        );
    }

    #[test]
    fn operator_regex_fires_by_name_and_later_rows_win() {
        let rules = RuleSet::compile(&[
            RuleSpec::Regex {
                name: "project_codename".into(),
                pattern: r"(?i)\bproject\s+bluebird\b".into(),
                class: Class::Internal,
            },
            RuleSpec::Regex {
                name: "project_codename".into(),
                pattern: r"(?i)\bproject\s+bluebird\b".into(),
                class: Class::Confidential,
            },
        ])
        .unwrap();
        let got = classify(["status of Project Bluebird?"], Class::Public, None, &rules);
        assert_eq!(got.fired, vec!["project_codename".to_owned()]);
        assert_eq!(got.class, Class::Confidential);
    }

    #[test]
    fn invalid_rules_are_rejected() {
        let cases = [
            RuleSpec::Builtin {
                detector: "dna".into(),
                enabled: true,
                class: None,
            },
            RuleSpec::Regex {
                name: "email".into(),
                pattern: "x".into(),
                class: Class::Internal,
            },
            RuleSpec::Regex {
                name: "broken".into(),
                pattern: "(unclosed".into(),
                class: Class::Internal,
            },
        ];
        for rule in cases {
            assert!(rule.validate().is_err(), "{rule:?}");
            assert!(
                RuleSet::compile(std::slice::from_ref(&rule)).is_err(),
                "{rule:?}"
            );
        }
    }
}
