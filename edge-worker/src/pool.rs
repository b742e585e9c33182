//! Makes mistralrs's engine thread a rayon worker, which is most of the
//! worker's decode speed on CPU.
//!
//! mistralrs runs the model on an engine thread of its own. candle splits
//! each quantized matmul (several per layer, every layer, every token) over
//! rayon's pool; called from a thread outside the pool, rayon injects the
//! job and the caller sleeps on a latch until a worker has finished it, so
//! each op costs two cross-thread wake-ups. For a 135M-parameter model those
//! hand-offs, not the arithmetic, set the speed: about 2,800 context
//! switches per token were counted, and decode ran at about 75 tokens/s on
//! two cores. When the calling thread is itself a worker of a pool, rayon
//! splits the op between it and the other workers and joins them without
//! sleeping: about 130 tokens/s on the same machine (docs/benchmarks.md).
//!
//! Rayon can only enrol a thread it did not start from that thread
//! ([`rayon::ThreadPoolBuilder::use_current_thread`]), and mistralrs starts
//! its engine thread internally. The one piece of our code mistralrs runs on
//! that thread is a request's logits processor (it samples a single running
//! sequence inline, on the engine thread), so every request carries
//! [`attach_processor`]: a processor that returns the logits unchanged and,
//! the first time it runs outside any rayon pool, builds a pool of
//! `threads` threads around the calling thread. The start-up warm-up request
//! does this before any client request arrives. Samples that mistralrs sends
//! to rayon (several sequences at once) already run on a rayon worker, where
//! the processor does nothing.
//!
//! Joining the pool removes the engine thread's own sleeps, but not the
//! other workers': between two ops (a few microseconds apart during decode)
//! rayon lets an idle worker spin a little, then sleep, and a sleeping
//! worker takes a futex wake-up and a trip through the scheduler before it
//! can steal its half of the next op, by which time the engine thread has
//! often done the whole op alone. So while the model runs, the processor
//! also keeps the other workers busy-polling for work
//! ([`keep_workers_warm`]) the way llama.cpp's thread pool spins between
//! graph nodes; a worker that finds nothing for [`WARM_IDLE`] goes back to
//! rayon's normal sleep, so an idle edge worker burns no CPU.
//!
//! The pool needs a second thread: the engine thread does not run rayon's
//! work loop while it waits for the next step, so a job that mistralrs
//! spawns from it (batched sampling) must be taken by another worker.
//! With one compute thread there is nothing to gain and that risk, so the
//! processor is not attached.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use mistralrs_core::CustomLogitsProcessor;

/// The pool around the engine thread; kept for the life of the process
/// (dropping it would stop its other workers).
static ENGINE_POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
/// The engine thread's index in [`ENGINE_POOL`].
static ENGINE_INDEX: OnceLock<usize> = OnceLock::new();
/// Set once an attempt was made, so later tokens cost one atomic load.
static TRIED: AtomicBool = AtomicBool::new(false);
/// How many workers are busy-polling for work now.
static WARM_WORKERS: AtomicUsize = AtomicUsize::new(0);
/// How long a warm worker polls without finding work before it goes back to
/// rayon's sleep: far longer than the gap between two ops or two tokens of
/// a running generation, far shorter than anything a person would notice.
pub const WARM_IDLE: Duration = Duration::from_millis(3);
/// A warm worker that finds no work reads the clock only every this many
/// polls: a clock read costs more than a poll (a virtual machine's clock
/// even more so), and time spent there is time it is not looking for the
/// next op.
const CLOCK_EVERY: u32 = 64;

/// The logits processor every request carries, or `None` for one thread.
pub fn attach_processor(threads: usize) -> Option<Arc<dyn CustomLogitsProcessor>> {
    (threads >= 2).then(|| {
        Arc::new(move |logits: &Tensor, _context: &[u32]| {
            attach_current_thread(threads);
            keep_workers_warm();
            Ok(logits.clone())
        }) as Arc<dyn CustomLogitsProcessor>
    })
}

fn attach_current_thread(threads: usize) {
    if TRIED.load(Ordering::Acquire) || rayon::current_thread_index().is_some() {
        return;
    }
    if TRIED.swap(true, Ordering::AcqRel) {
        return;
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("edge-compute-{i}"))
        .use_current_thread()
        .build()
    {
        Ok(pool) => {
            if let Some(index) = pool.current_thread_index() {
                let _ = ENGINE_INDEX.set(index);
            }
            let _ = ENGINE_POOL.set(pool);
            tracing::info!(threads, "engine thread joined its compute pool");
        }
        Err(e) => {
            tracing::warn!(error = %e, "engine thread stays outside rayon's pool; decoding will be slower");
        }
    }
}

/// Makes every worker of the pool but the engine thread poll for work until
/// none has come for [`WARM_IDLE`], unless they are doing so already. Called
/// once per token: a running generation keeps them warm.
fn keep_workers_warm() {
    let (Some(pool), Some(&engine)) = (ENGINE_POOL.get(), ENGINE_INDEX.get()) else {
        return;
    };
    let others = pool.current_num_threads() - 1;
    if WARM_WORKERS
        .compare_exchange(0, others, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    pool.spawn_broadcast(move |ctx| {
        // The engine thread must never poll here: it would stop running the
        // model that keeps the others busy.
        if ctx.index() == engine {
            return;
        }
        let mut last_work = Instant::now();
        let mut idle_polls = 0u32;
        loop {
            if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                idle_polls = 0;
                last_work = Instant::now();
            } else {
                idle_polls += 1;
                if idle_polls.is_multiple_of(CLOCK_EVERY) && last_work.elapsed() >= WARM_IDLE {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        WARM_WORKERS.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Whether the engine thread runs as a rayon worker (for the load report
/// and tests).
pub fn engine_attached() -> bool {
    ENGINE_POOL.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_gets_no_processor() {
        assert!(attach_processor(1).is_none());
        assert!(attach_processor(0).is_none());
    }

    #[test]
    fn the_processor_returns_the_logits_unchanged() {
        let p = attach_processor(2).unwrap();
        let logits = Tensor::new(&[0.5f32, -1.0, 2.0], &candle_core::Device::Cpu).unwrap();
        // Run from a rayon worker, where it must not build a pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let out = pool.install(|| p.apply(&logits, &[1, 2])).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![0.5, -1.0, 2.0]);
        assert!(!engine_attached());
    }
}
