//! Hands a decode matmul's chunks to threads that are already spinning.
//!
//! A decode matmul of a small model is a few microseconds of work, shorter
//! than a futex wake-up. Splitting it through rayon (a spawned job that the
//! other workers must find in a deque) leaves most of it to the calling
//! thread when the others are asleep or slow to look. A thread that has
//! nothing else to do while a model runs (an embedder keeps one spinning
//! between ops, as llama.cpp's threads spin on a barrier) can instead
//! register as a [`Helper`] and call [`Helper::help`] in its loop: it then
//! joins every job [`run_shared`] posts within one poll of a shared
//! pointer.
//!
//! One job is open at a time. A caller that finds the slot taken, or no
//! helper registered, gets `false` back and splits the work another way.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The open job: a pointer to the poster's `&(dyn Fn() + Sync)`, or null.
static SLOT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
/// Whether a thread is posting (owns [`SLOT`]).
static POSTING: AtomicBool = AtomicBool::new(false);
/// Helpers that may be inside the open job's closure.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Registered helpers.
static HELPERS: AtomicUsize = AtomicUsize::new(0);

/// Spins before a waiting poster yields its core: far longer than a chunk
/// of work, so a yield only happens when a helper was preempted.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// A thread that polls for shared jobs; registered while it lives.
pub struct Helper(());

impl Helper {
    /// Registers the calling thread as a helper until the value is dropped.
    /// It must then call [`Helper::help`] often: a poster waits for no one,
    /// but work a helper does not take is left to the poster.
    pub fn register() -> Self {
        HELPERS.fetch_add(1, Ordering::SeqCst);
        Helper(())
    }

    /// Runs the open job's closure, if there is one; returns whether it did.
    pub fn help(&self) -> bool {
        if SLOT.load(Ordering::Relaxed).is_null() {
            return false;
        }
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave;
        // Read after announcing ourselves: a poster that has not yet seen
        // the increment has not yet closed its job (see `Close::drop`), so
        // a non-null pointer here stays valid until `_leave` is dropped.
        let job = SLOT.load(Ordering::SeqCst);
        if job.is_null() {
            return false;
        }
        // SAFETY: `job` points at the poster's `&(dyn Fn() + Sync)`, which
        // outlives every helper counted in ACTIVE (see above).
        let job = unsafe { &*(job as *const &(dyn Fn() + Sync)) };
        job();
        true
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        HELPERS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements [`ACTIVE`] on every path out of [`Helper::help`].
struct Leave;

impl Drop for Leave {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Release);
    }
}

/// Whether some thread is registered as a helper.
pub fn has_helpers() -> bool {
    HELPERS.load(Ordering::Relaxed) > 0
}

/// Posts `work` to the registered helpers, runs it on the calling thread
/// too, and returns once no helper is inside it any more. `work` must split
/// itself (each call claims parts until none is left) and return when
/// nothing is left for it. Returns `false`, without running `work`, if no
/// helper is registered or another job is open.
pub fn run_shared(work: &(dyn Fn() + Sync)) -> bool {
    if !has_helpers() || POSTING.swap(true, Ordering::Acquire) {
        return false;
    }
    let job: &(dyn Fn() + Sync) = work;
    SLOT.store(&job as *const _ as *mut (), Ordering::SeqCst);
    let _close = Close;
    work();
    true
}

/// Closes the open job and waits for the helpers inside it, also when the
/// poster's own share of the work unwinds: `job` must outlive them.
struct Close;

impl Drop for Close {
    fn drop(&mut self) {
        SLOT.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A helper that announced itself after this load reads SLOT after
        // the store above and finds the job closed.
        let mut spins = 0u32;
        while ACTIVE.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins.is_multiple_of(SPINS_BEFORE_YIELD) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        POSTING.store(false, Ordering::Release);
    }
}
