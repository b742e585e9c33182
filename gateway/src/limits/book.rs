//! The in-process budget book: per key, spend and outstanding holds.
//!
//! Used alone by a single gateway, and by a fleet gateway as its fallback
//! while Redis cannot be reached. One mutex over a map: every operation is
//! a lookup and a few additions, so the lock is held for microseconds.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{check_budget, LimitExceeded, Settle, Settlement};

#[derive(Debug, Default)]
struct Account {
    /// Spend in nano-USD: the stored figure, raised by settlements.
    spent: i64,
    /// Sum of `holds`.
    reserved: i64,
    /// Outstanding holds by request id.
    holds: HashMap<String, i64>,
}

/// Spend and holds per key, in nano-USD.
#[derive(Debug, Default)]
pub struct Book {
    accounts: Mutex<HashMap<String, Account>>,
}

impl Book {
    #[must_use]
    pub fn new() -> Book {
        Book::default()
    }

    /// Holds `worst` for `request_id` if `budget` allows it. `stored_spent`
    /// raises the key's spend figure, never lowers it: the book may know of
    /// settlements the store has not written yet, and the store may know of
    /// spend this process never saw.
    pub fn reserve(
        &self,
        key_id: &str,
        request_id: &str,
        budget: i64,
        stored_spent: i64,
        worst: i64,
    ) -> Result<(), LimitExceeded> {
        let mut map = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let account = map.entry(key_id.to_owned()).or_default();
        account.spent = account.spent.max(stored_spent);
        if account.holds.contains_key(request_id) {
            return Ok(());
        }
        check_budget(budget, account.spent, account.reserved, worst)?;
        account.holds.insert(request_id.to_owned(), worst);
        account.reserved = account.reserved.saturating_add(worst);
        Ok(())
    }

    /// Releases the request's hold (if the book still has it) and counts
    /// its actual spend. Returns whether a hold was released.
    pub fn release(&self, s: &Settlement) -> bool {
        let mut map = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(account) = map.get_mut(&s.key_id) else {
            return false;
        };
        let held = account.holds.remove(&s.request_id);
        if let Some(amount) = held {
            account.reserved = account.reserved.saturating_sub(amount).max(0);
        }
        account.spent = account.spent.saturating_add(s.actual_nusd);
        held.is_some()
    }

    /// `(spent, reserved)` of a key, in nano-USD.
    #[must_use]
    pub fn figures(&self, key_id: &str) -> Option<(i64, i64)> {
        let map = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key_id).map(|a| (a.spent, a.reserved))
    }

    /// Forgets every account.
    pub fn clear(&self) {
        self.accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Settle for Book {
    fn settle(&self, settlement: Settlement) {
        self.release(&settlement);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settlement(req: &str, actual: i64) -> Settlement {
        Settlement {
            key_id: "k".into(),
            request_id: req.into(),
            actual_nusd: actual,
            drawn: None,
        }
    }

    #[test]
    fn holds_count_until_settled_and_spend_counts_after() {
        let book = Book::new();
        // A budget of 10 and holds of 4: two fit, the third does not.
        assert_eq!(book.reserve("k", "a", 10, 0, 4), Ok(()));
        assert_eq!(book.reserve("k", "b", 10, 0, 4), Ok(()));
        assert_eq!(book.reserve("k", "c", 10, 0, 4), Err(LimitExceeded::Budget));
        // Reserving the same request again holds nothing more.
        assert_eq!(book.reserve("k", "a", 10, 0, 4), Ok(()));
        assert_eq!(book.figures("k"), Some((0, 8)));
        // `a` cost 1: its hold of 4 is released, 1 is spent, so 5 remain.
        assert!(book.release(&settlement("a", 1)));
        assert_eq!(book.figures("k"), Some((1, 4)));
        assert_eq!(book.reserve("k", "c", 10, 0, 4), Ok(()));
        assert_eq!(book.reserve("k", "d", 10, 0, 2), Err(LimitExceeded::Budget));
        // A settlement whose hold is gone still counts its spend once.
        assert!(!book.release(&settlement("gone", 1)));
        assert_eq!(book.figures("k"), Some((2, 8)));
    }

    #[test]
    fn the_stored_figure_only_raises_spend() {
        let book = Book::new();
        assert_eq!(book.reserve("k", "a", 100, 50, 10), Ok(()));
        book.release(&settlement("a", 10));
        // The store has not written `a` yet: its older figure is ignored.
        assert_eq!(book.reserve("k", "b", 100, 50, 10), Ok(()));
        assert_eq!(book.figures("k"), Some((60, 10)));
        // Another writer spent more: the book follows.
        assert_eq!(
            book.reserve("k", "c", 100, 95, 10),
            Err(LimitExceeded::Budget)
        );
        assert_eq!(book.figures("k"), Some((95, 10)));
    }
}
