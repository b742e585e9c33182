//! Privacy classification of a request.
//!
//! A request's class is the maximum of three inputs: the default class of the
//! key that sent it, an explicit tag the caller attached, and whatever the
//! detectors find in its text. Taking the maximum is what makes the rule "a
//! request may raise its class but never lower it below its key's default"
//! hold by construction: no input can pull the result down.
//!
//! Detectors are data, not code paths: each one is a named pattern plus an
//! optional validator (Luhn, mod-97, address parsing) and the class it raises
//! a request to. The builtin table lives in [`builtin`]; operators can switch
//! builtins off, change the class they raise to, and add their own regexes
//! (rows in the store's `privacy_rules` table). [`RuleSet::compile`] turns
//! those rows into precompiled regexes once, so classifying a request costs one
//! pass per text over all detectors at once ([`prefilter`], which on noise
//! gives up for each detector alone) plus validation of the few hits.
//!
//! Every text is normalised before the detectors see it ([`normalize`]),
//! and [`request_texts`] says which texts of a request there are: all of
//! them, keys included, since all of them reach the upstream, and what they
//! decode to (escapes, JSON, base64, base32 and hex: [`binary`]). Digits
//! spelt as words or look-alike letters are read as digits too
//! ([`spelled`]), addresses and card numbers written backwards are read
//! forwards ([`reversed`]), a card number's groups with words between
//! them are read joined ([`apart`]), and text in ROT13 or written
//! backwards is read undone where it holds a detector's word so disguised
//! ([`disguise`]).
//!
//! Only detector *names* leave this module. The matched text is never
//! returned, so it cannot end up in the ledger, logs or metrics.

mod apart;
mod binary;
mod builtin;
mod disguise;
mod extract;
mod memo;
mod morse;
mod normalize;
mod prefilter;
mod reversed;
mod rules;
mod shifted;
mod spaced;
mod spelled;

use serde::{Deserialize, Serialize};

pub use builtin::BUILTIN_NAMES;
pub use extract::{is_opaque_part, request_texts};
pub use memo::Memo;
pub use normalize::normalize;
pub use rules::{PrivacyRule, RuleError, RuleSet, RuleSpec};

/// Sensitivity of a request, ordered from least to most restricted.
///
/// The derived `Ord` follows declaration order, so `max` over classes is the
/// combination rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// May run anywhere the tenant's policy allows.
    Public,
    /// Organisation-internal; still allowed in the cloud unless policy says no.
    Internal,
    /// Must stay on premises: never routed to a cloud-zone backend.
    Confidential,
}

impl Class {
    /// The lowercase wire name (`public`, `internal`, `confidential`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Public => "public",
            Class::Internal => "internal",
            Class::Confidential => "confidential",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a class name that is not one of the three wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown privacy class (expected public, internal or confidential)")]
pub struct UnknownClass;

impl std::str::FromStr for Class {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "public" => Ok(Class::Public),
            "internal" => Ok(Class::Internal),
            "confidential" => Ok(Class::Confidential),
            _ => Err(UnknownClass),
        }
    }
}

/// The outcome of [`classify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// The effective class: max of key default, explicit tag and detectors.
    pub class: Class,
    /// Names of the detectors that fired, sorted and deduplicated. Never the
    /// matched text.
    pub fired: Vec<String>,
}

/// Classifies a request from its texts (see [`request_texts`]), each
/// normalised before scanning, and scanned again with its letters that
/// pass for ASCII ones (Cyrillic `С`) read as those
/// ([`normalize::look_alikes_folded`]), its digits written as words or
/// look-alike letters read as digits ([`spelled`]), its words written a
/// character at a time joined ([`spaced`]), its addresses and card
/// numbers written backwards turned ([`reversed`]), a card number's
/// groups with words between them joined ([`apart`]), and its ROT13 or
/// backwards writing undone where it holds a detector's word so disguised
/// ([`disguise`]).
///
/// `key_default` is the floor; `explicit` is the caller's tag, which can only
/// raise the class.
pub fn classify<T: AsRef<str>>(
    texts: impl IntoIterator<Item = T>,
    key_default: Class,
    explicit: Option<Class>,
    rules: &RuleSet,
) -> Classification {
    classify_with(texts, key_default, explicit, rules, None)
}

/// [`classify`], with what a text of a kilobyte or more was found to hold
/// taken from `memo` or kept there ([`Memo`]).
pub fn classify_with<T: AsRef<str>>(
    texts: impl IntoIterator<Item = T>,
    key_default: Class,
    explicit: Option<Class>,
    rules: &RuleSet,
    memo: Option<&Memo>,
) -> Classification {
    let mut class = key_default.max(explicit.unwrap_or(Class::Public));
    let mut fired: Vec<String> = Vec::new();
    let mut pass = rules::OnePass::default();
    for text in texts {
        for &i in rules.findings(text.as_ref(), &mut pass, memo).iter() {
            if let Some((name, raised_to)) = rules.detector(i) {
                class = class.max(raised_to);
                fired.push(name.to_owned());
            }
        }
    }
    fired.sort_unstable();
    fired.dedup();
    Classification { class, fired }
}

/// Builds now what the scan otherwise builds on first use: the builtin
/// detectors, the views' gates and the table of look-alike letters (a
/// walk over the skeletons of every character of their blocks), so that the
/// first requests after start-up, not only the first one to hold a
/// Cyrillic letter, are not the ones to pay for it.
pub fn warm_up() {
    let _ = RuleSet::builtins();
    rules::warm_up();
    let _ = normalize::look_alikes_folded("\u{421}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn defaults() -> RuleSet {
        RuleSet::compile(&[]).unwrap()
    }

    #[test]
    fn class_order_and_parse() {
        assert!(Class::Public < Class::Internal);
        assert!(Class::Internal < Class::Confidential);
        assert_eq!("Confidential".parse::<Class>(), Ok(Class::Confidential));
        assert_eq!("secret".parse::<Class>(), Err(UnknownClass));
        assert_eq!(
            serde_json::to_string(&Class::Internal).unwrap(),
            "\"internal\""
        );
    }

    #[test]
    fn class_is_max_of_inputs() {
        let rules = defaults();
        let cases = [
            // (text, key default, tag, expected)
            ("hello", Class::Public, None, Class::Public),
            ("hello", Class::Internal, None, Class::Internal),
            (
                "hello",
                Class::Internal,
                Some(Class::Public),
                Class::Internal,
            ),
            (
                "hello",
                Class::Public,
                Some(Class::Confidential),
                Class::Confidential,
            ),
            (
                "mail bob@example.com",
                Class::Public,
                None,
                Class::Confidential,
            ),
            (
                "mail bob@example.com",
                Class::Confidential,
                None,
                Class::Confidential,
            ),
            (
                "card 4111 1111 1111 1111",
                Class::Public,
                Some(Class::Internal),
                Class::Confidential,
            ),
        ];
        for (text, key, tag, expected) in cases {
            let got = classify([text], key, tag, &rules);
            assert_eq!(got.class, expected, "{text:?} key={key} tag={tag:?}");
        }
    }

    #[test]
    fn fired_names_are_sorted_unique_and_hold_no_text() {
        let rules = defaults();
        let got = classify(
            ["a@b.io and c@d.io", "call +44 20 7946 0958", "x@y.org"],
            Class::Public,
            None,
            &rules,
        );
        assert_eq!(got.fired, vec!["email".to_owned(), "phone".to_owned()]);
        assert!(got.fired.iter().all(|f| !f.contains('@')));
    }

    #[test]
    fn ordinary_prose_has_no_findings() {
        let rules = defaults();
        let prose = "The quarterly report is due on 2024-03-15. Version 1.2.3.4.5 of the \
                     tool fixed 12 bugs; see section 4.2 and call std::fmt::Display at 10:30:00. \
                     Order number 1234567 was shipped to room 101.";
        let got = classify([prose], Class::Public, None, &rules);
        assert_eq!(got.fired, Vec::<String>::new());
        assert_eq!(got.class, Class::Public);
    }

    /// An address or a card number written backwards is read forwards;
    /// other digit runs and words with an at sign are not findings either
    /// way, and a phone-shaped run turned is not taken for a phone number.
    #[test]
    fn backwards_addresses_and_cards_are_read() {
        let rules = defaults();
        for (text, detector) in [
            ("reverse this: moc.elpmaxe@bob", "email"),
            ("reverse: 7646 3430 8841 9354", "card"),
            ("7646-3430-8841-9354 backwards", "card"),
        ] {
            let got = classify([text], Class::Public, None, &rules);
            assert_eq!(got.fired, [detector], "{text}");
        }
        for text in [
            "order 9876 5432 1098 7654 shipped",
            "ask @support or @team-leads",
            "call 555 123 4567 0 or 0044 20 7946 0958",
        ] {
            let got = classify([text], Class::Public, None, &rules);
            assert!(
                !got.fired.iter().any(|f| f == "card" || f == "email"),
                "{text}: {:?}",
                got.fired
            );
        }
    }

    /// A card number's groups with words between them are read joined;
    /// numbers in prose that make no card number are not.
    #[test]
    fn card_groups_with_words_between_are_read() {
        let rules = defaults();
        for text in [
            "first half 4539 1488, second half 0343 6467",
            "the digits are 4539, then 1488, then 0343, then 6467",
        ] {
            let got = classify([text], Class::Public, None, &rules);
            assert_eq!(got.fired, ["card"], "{text}");
        }
        for text in [
            "Revenue rose from 4512 to 5120 while costs fell from 3340 to 2987.",
            "Flights LH 4412, LH 4413 and LH 5501 leave at 0715, 0930 and 1245.",
            "Rooms 301, 302, 415 and 520 are booked from 0900 to 1700.",
        ] {
            let got = classify([text], Class::Public, None, &rules);
            assert!(got.fired.is_empty(), "{text}: {:?}", got.fired);
        }
    }

    /// Digits spelt as words or written with look-alike letters are read
    /// as the number they make; a count in prose is not.
    #[test]
    fn digits_in_words_or_look_alikes_are_read() {
        let rules = defaults();
        for (text, detector) in [
            (
                "my card: four five three nine, one four eight eight, zero three four three, six four six seven",
                "card",
            ),
            ("card 4539 l488 O343 6467", "card"),
            ("card: 4 5 3 9 1 4 8 8 0 3 4 3 6 4 6 7", "card"),
            ("card: Four-Five-Three-Nine-One-Four-Eight-Eight-0343-6467", "card"),
            ("call nine one seven, four two eight, zero one nine eight", "phone"),
            ("SSN one two three - four five - six seven eight nine", "national_id"),
        ] {
            let got = classify([text], Class::Public, None, &rules);
            assert!(got.fired.iter().any(|f| f == detector), "{text}: {:?}", got.fired);
        }
        let prose = "One or two of the three teams shipped four releases; I told Ollie.";
        assert_eq!(
            classify([prose], Class::Public, None, &rules).fired,
            Vec::<String>::new()
        );
    }
}
