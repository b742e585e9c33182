//! One running generation: reads the engine's chunks, measures TTFT and
//! per-token times, charges energy, and records everything exactly once —
//! including when the client goes away and the generation is dropped
//! half-way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::Slot;
use crate::energy::Accountant;
use crate::engine::{Done, Piece, Stream, TokenLogprobs};
use crate::stats::{LiveStats, Observation};
use crate::trace::GenerationTrace;

/// What the handler sees of the engine's output.
#[derive(Debug)]
pub enum Event {
    /// New text, with the log-probabilities of the tokens that made it
    /// when they were asked for. Text is empty only for tokens that add none
    /// (the end of the turn, or the start of a character that `max_tokens`
    /// cut off), which still carry their log-probabilities.
    Delta(Delta),
    /// The sequence ended; the last event.
    Finished(Finish),
    /// The engine failed or the deadline passed; the last event.
    Failed(Failure),
}

#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub text: String,
    /// One per token, in order; empty unless asked for.
    pub logprobs: Vec<TokenLogprobs>,
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub joules: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Engine,
    Timeout,
}

/// Shared services a generation reports to.
#[derive(Clone)]
pub struct Reporters {
    pub energy: Arc<Accountant>,
    pub stats: Arc<LiveStats>,
}

pub struct Generation {
    stream: Stream,
    reporters: Reporters,
    energy_id: u64,
    deadline: tokio::time::Instant,
    received_at: Instant,
    last_token_at: Option<Instant>,
    /// Whether the outcome has been recorded; if not by drop time, the client
    /// left and the generation counts as cancelled.
    recorded: bool,
    /// A finish that arrived together with the last text; returned by the
    /// call after the one that returned that text.
    pending_finish: Option<Finish>,
    /// Log-probabilities of tokens whose text has not been handed out yet
    /// (part of a character); they go with the next text.
    pending_logprobs: Vec<TokenLogprobs>,
    /// The request's spans; they end with the generation.
    trace: GenerationTrace,
    _slot: Slot,
}

impl Generation {
    /// Takes over a started engine request. `received_at` is when the HTTP
    /// request arrived, so TTFT includes queueing.
    pub fn new(
        stream: Stream,
        slot: Slot,
        reporters: Reporters,
        energy_id: u64,
        received_at: Instant,
        timeout: Duration,
        trace: GenerationTrace,
    ) -> Self {
        Self {
            stream,
            reporters,
            energy_id,
            deadline: tokio::time::Instant::from_std(received_at + timeout),
            received_at,
            last_token_at: None,
            recorded: false,
            pending_finish: None,
            pending_logprobs: Vec::new(),
            trace,
            _slot: slot,
        }
    }

    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(finish) = self.pending_finish.take() {
            return Some(Event::Finished(finish));
        }
        if self.recorded {
            return None;
        }
        loop {
            let piece = match tokio::time::timeout_at(self.deadline, self.stream.recv()).await {
                Err(_) => return Some(self.fail(Failure::Timeout, "deadline passed")),
                Ok(None) => return Some(self.fail(Failure::Engine, "engine closed the stream")),
                Ok(Some(p)) => p,
            };
            match piece {
                Piece::Chunk {
                    text,
                    logprobs,
                    done,
                } => {
                    if text.is_some() {
                        self.mark_token();
                    }
                    self.pending_logprobs.extend(logprobs);
                    match (text, done) {
                        (None, None) => {}
                        (Some(text), None) => return Some(self.delta(text)),
                        (None, Some(done)) => {
                            let finish = self.finish(&done);
                            if self.pending_logprobs.is_empty() {
                                return Some(Event::Finished(finish));
                            }
                            // The last tokens added no text (the end of the
                            // turn, a cut character): their log-probabilities
                            // go out first.
                            self.pending_finish = Some(finish);
                            return Some(self.delta(String::new()));
                        }
                        // A final chunk can carry the last piece of text too;
                        // hand it out first and keep the finish for next call.
                        (Some(text), Some(done)) => {
                            self.pending_finish = Some(self.finish(&done));
                            return Some(self.delta(text));
                        }
                    }
                }
                Piece::Failed(e) => return Some(self.fail(Failure::Engine, &e)),
            }
        }
    }

    fn delta(&mut self, text: String) -> Event {
        Event::Delta(Delta {
            text,
            logprobs: std::mem::take(&mut self.pending_logprobs),
        })
    }

    fn mark_token(&mut self) {
        let now = Instant::now();
        match self.last_token_at {
            None => {
                self.trace.first_token();
                metrics::histogram!("edge_ttft_seconds")
                    .record(now.duration_since(self.received_at).as_secs_f64());
            }
            Some(prev) => {
                metrics::histogram!("edge_decode_token_seconds")
                    .record(now.duration_since(prev).as_secs_f64());
            }
        }
        self.last_token_at = Some(now);
    }

    fn finish(&mut self, done: &Done) -> Finish {
        self.recorded = true;
        let share = self.reporters.energy.end(self.energy_id);
        self.reporters.stats.observe(&Observation::of(done, share));
        let joules = share.joules;
        metrics::counter!("edge_prompt_tokens_total").increment(done.prompt_tokens as u64);
        metrics::counter!("edge_completion_tokens_total").increment(done.completion_tokens as u64);
        // Counters are integers: millijoules keep small requests from rounding
        // to zero.
        metrics::counter!("edge_energy_millijoules_total")
            .increment((joules * 1000.0).round() as u64);
        metrics::histogram!("edge_request_joules").record(joules);
        metrics::counter!("edge_generations_total", "outcome" => "completed").increment(1);
        self.trace
            .finished(done.completion_tokens, &done.finish_reason, joules);
        Finish {
            finish_reason: done.finish_reason.clone(),
            prompt_tokens: done.prompt_tokens,
            completion_tokens: done.completion_tokens,
            joules,
        }
    }

    fn fail(&mut self, failure: Failure, detail: &str) -> Event {
        self.recorded = true;
        self.reporters.energy.end(self.energy_id);
        let outcome = match failure {
            Failure::Engine => "error",
            Failure::Timeout => "timeout",
        };
        tracing::warn!(outcome, detail, "generation failed");
        self.trace.ended(outcome);
        metrics::counter!("edge_generations_total", "outcome" => outcome).increment(1);
        Event::Failed(failure)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.recorded {
            // The client went away: dropping the stream makes mistralrs cancel the
            // sequence at its next step, and the slot frees with `_slot`.
            self.reporters.energy.end(self.energy_id);
            metrics::counter!("edge_generations_total", "outcome" => "cancelled").increment(1);
            self.trace.ended("cancelled");
            tracing::info!("client disconnected; generation cancelled");
        }
    }
}
