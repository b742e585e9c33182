//! Token counting and the filler answer.
//!
//! The mock has no tokenizer on purpose: it must answer in microseconds so
//! that the gateway's own overhead can be measured against it. Tokens are
//! approximated as one token per started 4 bytes of each whitespace-separated
//! word ("hello" = 2, "a cat" = 2). The answer is built from words of at most
//! four bytes, so the mock's count of its own output agrees with the same rule.

use std::sync::LazyLock;

/// Longest answer the mock produces, in tokens; larger requests are capped.
pub const MAX_COMPLETION_TOKENS: u32 = 4096;

const WORDS: [&str; 16] = [
    "the", "mock", "says", "this", "is", "a", "fast", "and", "calm", "test", "of", "your", "edge",
    "path", "to", "it",
];

/// Approximate token count of `text` (see the module docs).
#[must_use]
pub fn count_tokens(text: &str) -> u32 {
    let tokens: usize = text.split_whitespace().map(|w| w.len().div_ceil(4)).sum();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// The precomputed filler answer: token `i` is `pieces[i]`, and the first `n`
/// tokens joined are a prefix of `text`, so building an answer never formats.
pub struct Filler {
    text: String,
    /// Byte offset where each token ends in `text`.
    ends: Vec<usize>,
}

static FILLER: LazyLock<Filler> = LazyLock::new(Filler::build);

impl Filler {
    fn build() -> Self {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(MAX_COMPLETION_TOKENS as usize);
        for i in 0..MAX_COMPLETION_TOKENS as usize {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[i % WORDS.len()]);
            ends.push(text.len());
        }
        Self { text, ends }
    }

    /// The shared filler.
    pub fn get() -> &'static Self {
        &FILLER
    }

    /// The first `n` tokens as one string (`n` capped at [`MAX_COMPLETION_TOKENS`]).
    pub fn prefix(&self, n: u32) -> &str {
        match (n as usize).checked_sub(1) {
            None => "",
            Some(last) => &self.text[..self.ends[last.min(self.ends.len() - 1)]],
        }
    }

    /// Token `i` as it appears in a stream: its leading space included.
    pub fn piece(&self, i: u32) -> &str {
        let i = (i as usize).min(self.ends.len() - 1);
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_in_four_byte_pieces() {
        for (text, tokens) in [
            ("", 0),
            ("a", 1),
            ("abcd", 1),
            ("abcde", 2),
            ("hello world", 4),
            ("  spaced\n\tout  ", 3),
        ] {
            assert_eq!(count_tokens(text), tokens, "{text:?}");
        }
    }

    #[test]
    fn filler_pieces_join_to_prefix_and_count_as_one_token_each() {
        let filler = Filler::get();
        for n in [0_u32, 1, 2, 17, 300] {
            let joined: String = (0..n).map(|i| filler.piece(i)).collect();
            assert_eq!(joined, filler.prefix(n));
            assert_eq!(count_tokens(filler.prefix(n)), n);
        }
    }

    #[test]
    fn filler_is_capped() {
        let filler = Filler::get();
        assert_eq!(
            filler.prefix(MAX_COMPLETION_TOKENS + 10),
            filler.prefix(MAX_COMPLETION_TOKENS)
        );
    }
}
