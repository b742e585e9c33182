//! Addresses and card numbers written backwards, read forwards.
//!
//! A model reverses `moc.elpmaxe@bob` or `7646 3430 8841 9354` on request,
//! so either is as readable to it as written forwards. [`turned`] finds the
//! places where one may stand backwards and turns only them: each word
//! (between white space) with a dot before its at sign, as an address's
//! domain is turned (`moc.elpmaxe@bob`), and each run of 13 to 19
//! digits, apart by at most one separator, that is a card number whole once
//! turned ([`super::builtin::card_number`]; the card detector tries every
//! card-length window of a longer run, which turned would find one in an
//! IBAN's digits or an order number as often as forwards). The rest of the
//! text is not turned: a finding that stands backwards stands whole in one
//! of these, and turning a whole text would double the scan of every text.
//!
//! Only the detectors of [`DETECTORS`] read what this gives: other shapes
//! turned (a date, a version, a phone number ending in 0) would pass for
//! phone numbers or addresses.

use super::builtin::card_number;

/// The detectors that read the turned text.
pub(super) const DETECTORS: &[&str] = &["card", "email"];

/// What may stand between the digits of a run (one at a time).
const SEPARATORS: &[char] = &[' ', '-', '.', '/', '_', ','];

/// Matches wherever [`turned`] could turn anything: a dot and an at sign
/// after it in one word, or 13 digits apart by at most one separator each.
/// Run in the detectors' one pass.
pub(super) const GATE: &str = r"\.[^\s@]*@|[0-9](?:[ \-./_,]?[0-9]){12}";

/// The words of `s` with a dot before an at sign, and its digit runs that
/// are card numbers turned, each turned (its characters in reverse order),
/// a line each; nothing if it has none.
pub(super) fn turned(s: &str) -> Vec<String> {
    let mut out = String::new();
    let mut turn = |span: &str| {
        out.extend(span.chars().rev());
        out.push('\n');
    };
    let domain_first = |w: &&str| {
        w.split_once('@')
            .is_some_and(|(head, _)| head.contains('.'))
    };
    for word in s.split(char::is_whitespace).filter(domain_first) {
        turn(word);
    }
    // The digit run being read (where it starts and ends) and its first
    // 20 digits: a run of more is no card number.
    let mut run: Option<(usize, usize)> = None;
    let mut digits: Vec<u32> = Vec::with_capacity(20);
    let mut last_was_digit = false;
    for (at, c) in s.char_indices().chain(std::iter::once((s.len(), '\n'))) {
        if let Some(d) = c.to_digit(10) {
            run = Some((run.map_or(at, |(start, _)| start), at + 1));
            if digits.len() < 20 {
                digits.push(d);
            }
            last_was_digit = true;
            continue;
        }
        let goes_on = last_was_digit && SEPARATORS.contains(&c);
        last_was_digit = false;
        if !goes_on {
            if let Some((start, end)) = run.take() {
                digits.reverse();
                if card_number(&digits) {
                    turn(&s[start..end]);
                }
            }
            digits.clear();
        }
    }
    if out.is_empty() {
        Vec::new()
    } else {
        vec![out]
    }
}

#[cfg(test)]
mod tests {
    use super::turned;

    #[test]
    fn addresses_and_digit_runs_are_turned() {
        assert_eq!(turned("mail moc.elpmaxe@bob today"), ["bob@example.com\n"]);
        assert_eq!(
            turned("card: 7646 3430 8841 9354."),
            ["4539 1488 0343 6467\n"]
        );
        assert_eq!(turned("7646-3430-8841-9354"), ["4539-1488-0343-6467\n"]);
        // Two separators in a row end a run; short runs, and runs that
        // are no card number turned, are not turned.
        assert!(turned("7646  3430 8841 9354").is_empty());
        assert!(turned("call 555 0123, order 12345").is_empty());
        assert!(turned("order 1234 5678 9012 3456").is_empty());
        assert!(turned("DE88 3704 0044 0532 0130 00").is_empty());
        assert!(turned("").is_empty());
        assert!(turned("plain prose without either").is_empty());
        assert!(turned("ask @support or bob@example.com").is_empty());
    }
}
