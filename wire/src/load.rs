//! The edge worker's load report, `GET /v1/worker/load`.

use serde::{Deserialize, Serialize};

/// What a worker reports about itself. Fields the worker cannot know yet are
/// `None` (`null` on the wire): the model while it loads, rates and joules
/// per token until it has measured a generation. A report with `None` in
/// them is a *successful* poll of a worker that is not ready or not yet
/// measured, never a failure. Unknown fields are ignored, so a worker can
/// add fields without breaking older gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The served model id; `None` while loading.
    pub model: Option<String>,
    /// Quantization of the model file (e.g. `Q4_1`).
    #[serde(default)]
    pub quantization: Option<String>,
    /// Quantization actually computed with, when the worker converted it.
    #[serde(default)]
    pub served_quantization: Option<String>,
    /// Context length in tokens; `None` while loading.
    pub context_length: Option<u32>,
    pub active_sequences: u32,
    pub waiting_sequences: u32,
    pub max_running_sequences: u32,
    pub max_waiting_sequences: u32,
    /// Requests admitted since the worker started, from every gateway
    /// (running, waiting and departed). Two reports give the arrival rate,
    /// and with the sequences in the system the departure rate; `None` from
    /// a worker that does not count them.
    #[serde(default)]
    pub admitted_total: Option<u64>,
    /// Measured (EWMA) rates; `None` until measured.
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    /// Measured joules per token; `None` until measured.
    pub joules_per_prompt_token: Option<f64>,
    pub joules_per_output_token: Option<f64>,
    /// The same measured at each load: entry `i` from requests that ran
    /// with `i + 1` requests running on average, one entry per running
    /// slot, `None` inside where no such request has finished yet. On a CPU
    /// a request's share of the energy depends on how many run beside it.
    /// Empty from a worker that does not keep them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joules_at_running: Vec<JoulesPerToken>,
    /// `rapl` or `cpu_time`: how the joules were measured.
    #[serde(default)]
    pub energy_method: Option<String>,
    /// Whether the engine thread computes in the rayon pool (fast path).
    #[serde(default)]
    pub engine_in_compute_pool: bool,
    /// What the worker can honour beyond plain chat.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How much the worker's prefix cache holds; `None` when the cache is
    /// off or its size in tokens is unknown.
    #[serde(default)]
    pub prefix_cache: Option<PrefixCache>,
    /// The model is loaded and the worker is not draining.
    pub ready: bool,
    /// The worker is shutting down and takes no new work.
    pub draining: bool,
}

/// Measured joules per prompt and per output token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JoulesPerToken {
    pub prompt: Option<f64>,
    pub output: Option<f64>,
}

/// Request features a backend can honour. A request that needs one goes
/// only to backends that declare it; absent means "no".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `response_format` `json_object` and `json_schema`, enforced by
    /// constrained decoding.
    #[serde(default)]
    pub json_schema: bool,
    /// `tools` / `tool_choice` (function calling).
    #[serde(default)]
    pub tools: bool,
}

/// The capacity of a worker's prefix cache: the finished sequences (prompt
/// and answer) whose keys and values it keeps, least recently used out
/// first once either bound is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCache {
    pub sequences: u32,
    pub tokens: u64,
}

impl LoadReport {
    /// Joules per prompt and per output token for a request that would run
    /// with `running` requests running (itself included): the figures
    /// measured at that load where there are some, the averages over every
    /// load otherwise. A negative figure is no measurement (it would make
    /// a worker look cheaper than free) and counts as absent.
    #[must_use]
    pub fn joules_at(&self, running: u32) -> JoulesPerToken {
        let at = usize::try_from(running.max(1) - 1)
            .ok()
            .and_then(|i| self.joules_at_running.get(i))
            .copied()
            .unwrap_or_default();
        let average = self.average_joules();
        JoulesPerToken {
            prompt: valid_joules(at.prompt).or(average.prompt),
            output: valid_joules(at.output).or(average.output),
        }
    }

    /// The averages of joules per prompt and per output token over every
    /// load, each absent where it is negative or not finite.
    #[must_use]
    pub fn average_joules(&self) -> JoulesPerToken {
        JoulesPerToken {
            prompt: valid_joules(self.joules_per_prompt_token),
            output: valid_joules(self.joules_per_output_token),
        }
    }

    /// Every running slot and every queue place is taken: the worker would
    /// reject another request.
    #[must_use]
    pub fn saturated(&self) -> bool {
        self.active_sequences >= self.max_running_sequences
            && self.waiting_sequences >= self.max_waiting_sequences
    }
}

/// A joules-per-token figure, or `None` where it is no measurement.
fn valid_joules(j: Option<f64>) -> Option<f64> {
    j.filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_loading_worker_report_parses() {
        let text = r#"{"model":null,"quantization":"Q4_1","context_length":null,
            "active_sequences":0,"waiting_sequences":0,"max_running_sequences":4,
            "max_waiting_sequences":8,"prefill_tokens_per_s":null,"decode_tokens_per_s":null,
            "joules_per_prompt_token":null,"joules_per_output_token":null,
            "energy_method":"cpu_time","ready":false,"draining":false,"future_field":1}"#;
        let r: LoadReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.model, None);
        assert!(!r.ready);
        assert_eq!(r.capabilities, Capabilities::default());
        assert_eq!(r.prefix_cache, None);
        assert!(!r.saturated());
        assert!(r.joules_at_running.is_empty());
        assert_eq!(r.joules_at(1), JoulesPerToken::default());
    }

    #[test]
    fn joules_at_a_load_fall_back_to_the_averages() {
        let text = r#"{"model":"m","context_length":2048,
            "active_sequences":1,"waiting_sequences":0,"max_running_sequences":3,
            "max_waiting_sequences":8,"prefill_tokens_per_s":100.0,"decode_tokens_per_s":20.0,
            "joules_per_prompt_token":0.02,"joules_per_output_token":0.2,
            "joules_at_running":[{"prompt":0.01,"output":0.1},{"prompt":null,"output":0.3},
                {"prompt":null,"output":null}],
            "ready":true,"draining":false}"#;
        let r: LoadReport = serde_json::from_str(text).unwrap();
        let j = |prompt, output| JoulesPerToken { prompt, output };
        assert_eq!(r.joules_at(1), j(Some(0.01), Some(0.1)));
        assert_eq!(r.joules_at(2), j(Some(0.02), Some(0.3)));
        assert_eq!(r.joules_at(3), j(Some(0.02), Some(0.2)));
        // Beyond the slots a worker reported (or zero): the averages.
        assert_eq!(r.joules_at(7), j(Some(0.02), Some(0.2)));
        assert_eq!(r.joules_at(0), r.joules_at(1));
        // A negative figure is no figure: the average, then nothing.
        let mut odd = r.clone();
        odd.joules_at_running[0].output = Some(-1.0);
        assert_eq!(odd.joules_at(1), j(Some(0.01), Some(0.2)));
        odd.joules_per_output_token = Some(-0.5);
        assert_eq!(odd.joules_at(1), j(Some(0.01), None));
        // The averages alone (what a served request is charged with when
        // its answer carried no energy) are filtered the same way.
        assert_eq!(r.average_joules(), j(Some(0.02), Some(0.2)));
        assert_eq!(odd.average_joules(), j(Some(0.02), None));
        odd.joules_per_prompt_token = Some(f64::NAN);
        assert_eq!(odd.average_joules(), j(None, None));
        // The field round-trips, and an empty one is left out.
        let back: LoadReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let none = LoadReport {
            joules_at_running: Vec::new(),
            ..r
        };
        assert!(!serde_json::to_string(&none)
            .unwrap()
            .contains("joules_at_running"));
    }
}
