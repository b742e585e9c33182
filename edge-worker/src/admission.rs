//! Admission control: a fixed number of running slots and a bounded queue.
//!
//! The worker, not mistralrs, decides how many sequences run: mistralrs's
//! own waiting list is unbounded, so a burst would grow memory and latency
//! without limit. Here a request is *admitted* only while running plus
//! waiting stays under `max_running + max_waiting`; otherwise it gets 429 at
//! once. Admitted requests then wait for one of `max_running` slots. Both
//! guards release on drop, so a client that disconnects, wherever it is,
//! frees its place immediately.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    /// Requests admitted and not yet finished: waiting plus running.
    admitted: AtomicUsize,
    /// Requests holding a running slot.
    running: AtomicUsize,
    /// Requests ever admitted: the gateways derive arrival and departure
    /// rates from it (see `wire::LoadReport::admitted_total`).
    admitted_total: AtomicU64,
    pub max_running: usize,
    pub max_waiting: usize,
}

/// A place in the system; dropping it leaves the queue (or the slot).
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
}

/// A running slot. Holds its ticket so both are released together.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    ticket: Ticket,
}

impl Admission {
    pub fn new(max_running: usize, max_waiting: usize) -> Arc<Self> {
        let max_running = max_running.max(1);
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_running)),
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            admitted_total: AtomicU64::new(0),
            max_running,
            max_waiting,
        })
    }

    /// A ticket, or `None` when every slot and queue place is taken.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        let limit = self.max_running + self.max_waiting;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.admitted_total.fetch_add(1, Ordering::AcqRel);
        self.publish();
        Some(Ticket {
            admission: Arc::clone(self),
        })
    }

    /// Requests admitted since start.
    pub fn admitted_total(&self) -> u64 {
        self.admitted_total.load(Ordering::Acquire)
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> usize {
        self.admitted
            .load(Ordering::Acquire)
            .saturating_sub(self.running())
    }

    fn publish(&self) {
        metrics::gauge!("edge_active_sequences").set(self.running() as f64);
        metrics::gauge!("edge_waiting_sequences").set(self.waiting() as f64);
    }
}

impl Ticket {
    /// Waits up to `timeout` for a running slot; `None` if none came free.
    pub async fn start(self, timeout: Duration) -> Option<Slot> {
        let slots = Arc::clone(&self.admission.slots);
        let permit = tokio::time::timeout(timeout, slots.acquire_owned())
            .await
            .ok()?
            .ok()?;
        self.admission.running.fetch_add(1, Ordering::AcqRel);
        self.admission.publish();
        Some(Slot {
            _permit: permit,
            ticket: self,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.admitted.fetch_sub(1, Ordering::AcqRel);
        self.admission.publish();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The ticket (dropped right after) republishes the gauges.
        self.ticket.admission.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_running_plus_waiting_then_refuses() {
        let adm = Admission::new(2, 1);
        let a = adm.try_admit().unwrap();
        let b = adm.try_admit().unwrap();
        let c = adm.try_admit().unwrap();
        assert!(adm.try_admit().is_none());
        assert_eq!(adm.admitted_total(), 3, "refusals are not admissions");
        let sa = a.start(Duration::from_secs(1)).await.unwrap();
        let _sb = b.start(Duration::from_secs(1)).await.unwrap();
        assert_eq!((adm.running(), adm.waiting()), (2, 1));
        // The third waits for a slot and times out while both are busy.
        assert!(c.start(Duration::from_millis(20)).await.is_none());
        assert_eq!((adm.running(), adm.waiting()), (2, 0));
        drop(sa);
        assert_eq!((adm.running(), adm.waiting()), (1, 0));
        let d = adm.try_admit().unwrap();
        let _sd = d.start(Duration::from_secs(1)).await.unwrap();
        assert_eq!(adm.running(), 2);
    }

    #[tokio::test]
    async fn a_waiting_request_gets_a_slot_when_one_frees() {
        let adm = Admission::new(1, 1);
        let first = adm
            .try_admit()
            .unwrap()
            .start(Duration::from_secs(1))
            .await
            .unwrap();
        let waiter = adm.try_admit().unwrap();
        let handle =
            tokio::spawn(async move { waiter.start(Duration::from_secs(5)).await.is_some() });
        tokio::task::yield_now().await;
        drop(first);
        assert!(handle.await.unwrap());
        assert_eq!((adm.running(), adm.waiting()), (0, 0));
    }
}
