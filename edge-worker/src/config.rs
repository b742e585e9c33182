//! Worker configuration: command-line flags, each with an environment
//! variable of the same meaning, so the worker runs the same way by hand, in
//! a container or under a supervisor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Everything the worker needs to start. Defaults suit the bundled
/// SmolLM2-135M model on a small CPU machine.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "edge-worker",
    version,
    about,
    after_help = "Worker token: set EDGE_WORKER_TOKEN (the token itself) or --worker-token-file \
                  to require `Authorization: Bearer <token>` on every /v1 route; /healthz, \
                  /readyz and /metrics stay open. Without a token the worker listens only on \
                  a loopback address, unless --insecure-no-token is given."
)]
pub struct Config {
    /// Path to the GGUF model file (tokenizer and chat template are read from it).
    /// Use `--hf-model` instead to fetch from a Hugging Face repository.
    #[arg(long, env = "EDGE_MODEL_PATH", required_unless_present = "hf_model")]
    pub model_path: Option<PathBuf>,

    /// A Hugging Face repository id holding a GGUF file (needs network access);
    /// the file inside it is named by `--hf-file`.
    #[arg(long, env = "EDGE_HF_MODEL", requires = "hf_file")]
    pub hf_model: Option<String>,

    /// The GGUF file inside `--hf-model`.
    #[arg(long, env = "EDGE_HF_FILE")]
    pub hf_file: Option<String>,

    /// The model id clients must send and `/v1/models` lists. Defaults to the
    /// GGUF's `general.name`, lower-cased with spaces turned into dashes.
    #[arg(long, env = "EDGE_MODEL_ID")]
    pub model_id: Option<String>,

    /// Address to listen on. A non-loopback address needs a worker token
    /// (or `--insecure-no-token`).
    #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// File holding the worker token (surrounding whitespace ignored). With a
    /// token, from this file or from the `EDGE_WORKER_TOKEN` environment
    /// variable (there is no flag that takes the token itself), every `/v1`
    /// route requires `Authorization: Bearer <token>`.
    #[arg(long, env = "EDGE_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,

    /// Serve `/v1` without a worker token on a non-loopback address: anyone
    /// who can reach the worker can use it. Without a token and without
    /// this flag the worker refuses to start on such an address.
    #[arg(long, env = "EDGE_INSECURE_NO_TOKEN")]
    pub insecure_no_token: bool,

    /// Sequences decoded together in one batch. On CPU batching helps little,
    /// so a small number keeps per-request latency predictable.
    #[arg(long, env = "EDGE_MAX_RUNNING", default_value_t = 4)]
    pub max_running: usize,

    /// Requests allowed to wait for a running slot; beyond this the worker
    /// answers 429 with `Retry-After` instead of queueing without bound.
    #[arg(long, env = "EDGE_MAX_WAITING", default_value_t = 16)]
    pub max_waiting: usize,

    /// Finished sequences whose KV cache is kept so that a later prompt
    /// sharing their prefix (a common system prompt) skips that part of the
    /// prefill: with the bundled model, a 240-token shared system prompt
    /// takes the first token from about 1.5 s to 0.19 s. The kept caches
    /// cost memory, each as much as its tokens' keys and values, and are
    /// bounded by `--prefix-cache-mib` too: least recently used ones go
    /// first once either bound is passed; 0 turns the prefix cache off.
    #[arg(long, env = "EDGE_PREFIX_CACHE_SEQUENCES", default_value_t = 16)]
    pub prefix_cache_sequences: usize,

    /// Most memory, in MiB, that the prefix cache's kept keys and values may
    /// hold. With the bundled model a token's keys and values take 45 KiB,
    /// so the default keeps about 700 tokens of finished prompts: a shared
    /// system prompt or two, which is what the cache is for.
    #[arg(long, env = "EDGE_PREFIX_CACHE_MIB", default_value_t = 32)]
    pub prefix_cache_mib: usize,

    /// Longest a request may wait in the queue before it gets 429.
    #[arg(long, env = "EDGE_QUEUE_TIMEOUT_MS", default_value_t = 30_000)]
    pub queue_timeout_ms: u64,

    /// Largest accepted request body, in bytes (larger gets 413).
    #[arg(long, env = "EDGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a connection may take to send a request's headers; an idle
    /// keep-alive connection is closed after it too (keep it above the
    /// gateway's 4 s pool idle time, or the two race to close).
    #[arg(long, env = "EDGE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Longest a request's body may take to arrive (longer gets 408).
    #[arg(long, env = "EDGE_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, env = "EDGE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Output tokens generated when a request names no `max_tokens`.
    #[arg(long, env = "EDGE_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: usize,

    /// Longest a whole request may take, in seconds, before it is ended.
    #[arg(long, env = "EDGE_REQUEST_TIMEOUT_S", default_value_t = 300)]
    pub request_timeout_s: u64,

    /// On SIGTERM, how long in-flight requests may run before the worker exits.
    #[arg(long, env = "EDGE_DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub drain_timeout_s: u64,

    /// Compute threads for the model (candle's and rayon's pools). 0 means one
    /// per available core. With two or more, mistralrs's engine thread is one
    /// of them, which is what makes decoding fast on CPU.
    #[arg(long, env = "EDGE_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Watts drawn by one fully busy core, used to turn CPU time into joules
    /// where RAPL energy counters cannot be read.
    #[arg(long, env = "EDGE_WATTS_PER_CORE", default_value_t = 7.5)]
    pub watts_per_core: f64,

    /// Directory of the Linux powercap (RAPL) interface.
    #[arg(long, env = "EDGE_POWERCAP_DIR", default_value = "/sys/class/powercap")]
    pub powercap_dir: PathBuf,

    /// Re-quantize weights before loading; see `requantize.rs`. `auto`
    /// converts types without SIMD kernels here (Q5_0, Q5_1) to Q8_0,
    /// `q8_0`/`q4_0` convert every `Q4_1`/`Q5_0`/`Q5_1` tensor, `off` loads the
    /// file as it is.
    #[arg(long, env = "EDGE_REQUANTIZE", value_enum, default_value = "auto")]
    pub requantize: crate::requantize::Requantize,

    /// Where re-quantized copies of model files are cached.
    #[arg(long, env = "EDGE_CACHE_DIR", default_value_os_t = std::env::temp_dir().join("edge-worker-cache"))]
    pub cache_dir: PathBuf,

    /// The gateway fleet's address (a load balancer, or one gateway), e.g.
    /// `http://gateway:8080`. With it the worker registers itself: it sends
    /// its load report to `<url>/fleet/workers` every `--heartbeat-ms`,
    /// presenting the worker token (required), and the gateways route to it
    /// while the heartbeats keep coming.
    #[arg(long, env = "EDGE_GATEWAY_URL")]
    pub gateway_url: Option<String>,

    /// Where the gateways reach this worker, `http://host:port` (a
    /// loopback, private or LAN host; gateways refuse others). Defaults to
    /// `http://<listen address>`, which needs a specific listen address.
    #[arg(long, env = "EDGE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Interval between two registration heartbeats, in milliseconds.
    #[arg(long, env = "EDGE_HEARTBEAT_MS", default_value_t = 1_000)]
    pub heartbeat_ms: u64,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "EDGE_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_s)
    }
}
