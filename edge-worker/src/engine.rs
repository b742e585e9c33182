//! The model engine: loads the GGUF through `mistralrs-core` and turns chat
//! requests into a [`Stream`] of plain [`Piece`]s. No mistralrs type leaves
//! this module (except the message type the requests are built of).
//!
//! Generation always runs in mistralrs's streaming mode, even for clients
//! that asked for one JSON answer: mistralrs notices a dropped receiver only
//! when it sends a chunk, so streaming internally is what lets a disconnected
//! client free its sequence within one decode step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::Device;
use either::Either;
use indexmap::IndexMap;
use mistralrs_core::llguidance::api::TopLevelGrammar;
use mistralrs_core::llguidance::toktrie::{TokEnv, TokTrie};
use mistralrs_core::llguidance::ParserFactory;
use mistralrs_core::{
    AutoDeviceMapParams, Constraint, CustomLogitsProcessor, DefaultSchedulerMethod,
    DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig, MessageContent, MistralRs,
    MistralRsBuilder, ModelDType, NormalRequest, Request, RequestMessage, Response,
    ResponseLogprob, SamplingParams, SchedulerConfig, StopTokens, TokenSource, TokenizationRequest,
};
use tokio::sync::mpsc;

use crate::gguf::GgufInfo;

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A local GGUF file; needs no network.
    File(GgufInfo),
    /// A Hugging Face repository and the GGUF file inside it.
    Hub { repo: String, file: String },
}

/// Engine settings that come from the worker's configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub source: ModelSource,
    pub model_id: String,
    pub max_running: usize,
    /// Compute threads (at least 1); see [`crate::pool`].
    pub threads: usize,
    /// Finished sequences kept in the prefix cache; 0 turns it off.
    pub prefix_cache_sequences: usize,
    /// The most bytes of keys and values the prefix cache holds.
    pub prefix_cache_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("failed to load the model: {0}")]
    Load(String),
    #[error("the engine stopped accepting requests")]
    Closed,
    #[error("the engine rejected the request: {0}")]
    Rejected(String),
    /// The requested output format cannot be compiled into a grammar; the
    /// text says why and names no path, so it may go back to the client.
    #[error("{0}")]
    InvalidFormat(String),
}

/// What shape the answer must take.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum OutputFormat {
    /// Free text.
    #[default]
    Text,
    /// JSON matching this JSON Schema, enforced token by token by
    /// constrained decoding (llguidance): tokens that would break the schema
    /// are masked out before sampling, so the answer is valid unless
    /// `max_tokens` cuts it short.
    JsonSchema(serde_json::Value),
}

/// A chat message as the engine's chat template consumes it.
pub type EngineMessage = IndexMap<String, MessageContent>;

/// What a caller asks the engine to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub messages: Vec<EngineMessage>,
    pub max_tokens: usize,
    /// 0 means greedy decoding; `None` means OpenAI's default of 1.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Seeds the request's own random stream: the same request with the same
    /// seed samples the same tokens, whatever else runs beside it.
    pub seed: Option<u64>,
    pub format: OutputFormat,
    /// `None`: no log-probabilities, and none computed. `Some(n)`: each
    /// generated token's, with the `n` most likely tokens at its position.
    pub logprobs: Option<usize>,
}

pub struct Engine {
    runner: Arc<MistralRs>,
    /// mistralrs wants a distinct id per request; it names sequences in logs.
    next_id: AtomicUsize,
    pub model_id: String,
    /// Tokens of prompt plus output one sequence may hold.
    pub context_length: usize,
    /// Carried by every request; see [`crate::pool`].
    attach_pool: Option<Arc<dyn CustomLogitsProcessor>>,
    /// Compiles output formats into grammars over the model's vocabulary;
    /// the same factory mistralrs builds its per-sequence constraints with.
    grammars: Option<Arc<ParserFactory>>,
    /// The token a constrained sequence is forced to emit once its grammar
    /// is complete (llguidance's end of text), with its text, when the
    /// engine does not end sequences on it by itself. Some chat models end
    /// a turn with another token (SmolLM2: `<|im_end|>` ends, llguidance
    /// picks `<|endoftext|>`); without this stop, a finished JSON answer
    /// would run on, invisibly, to `max_tokens` and report `length`.
    grammar_stop: Option<(u32, String)>,
    /// The vocabulary's exact bytes per token, for log-probabilities.
    vocab: Option<TokEnv>,
}

impl Engine {
    /// Loads the weights (blocking work, run off the async threads) and
    /// starts mistralrs's engine thread.
    pub async fn load(options: EngineOptions) -> Result<Self, EngineError> {
        let (dir, file) = match &options.source {
            ModelSource::File(info) => {
                let dir = info
                    .path
                    .parent()
                    .map_or_else(|| ".".to_string(), |p| p.to_string_lossy().into_owned());
                let dir = if dir.is_empty() { ".".to_string() } else { dir };
                let file = info
                    .path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .ok_or_else(|| EngineError::Load("model path has no file name".into()))?;
                (dir, file)
            }
            ModelSource::Hub { repo, file } => (repo.clone(), file.clone()),
        };

        let pipeline = tokio::task::spawn_blocking(move || {
            let loader = GGUFLoaderBuilder::new(
                None,
                None,
                dir,
                vec![file],
                GGUFSpecificConfig { topology: None },
                false,
                None,
            )
            .build();
            // F32 activations: on CPU, candle's F16 paths are emulated and
            // markedly slower than F32 for a model this small.
            loader.load_model_from_hf(
                None,
                TokenSource::None,
                &ModelDType::F32,
                &Device::Cpu,
                true,
                DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
                None,
                None,
            )
        })
        .await
        .map_err(|e| EngineError::Load(format!("loader panicked: {e}")))?
        .map_err(|e| EngineError::Load(format!("{e:#}")))?;

        let (max_seq_len, grammars, grammar_stop) = {
            let pipeline = pipeline.lock().await;
            let metadata = pipeline.get_metadata();
            let grammar_stop = metadata.llg_factory.as_ref().and_then(|factory| {
                let trie = factory.tok_env().tok_trie();
                let eos = trie.eos_token();
                // Special tokens carry a marker byte before their text.
                let bytes = trie.token(eos);
                let bytes = bytes
                    .strip_prefix(&[TokTrie::SPECIAL_TOKEN_MARKER])
                    .unwrap_or(bytes);
                let text = String::from_utf8_lossy(bytes).into_owned();
                (!metadata.eos_tok.contains(&eos)).then_some((eos, text))
            });
            (
                metadata.max_seq_len,
                metadata.llg_factory.clone(),
                grammar_stop,
            )
        };
        let max_running = std::num::NonZeroUsize::new(options.max_running.max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let scheduler = SchedulerConfig::DefaultScheduler {
            method: DefaultSchedulerMethod::Fixed(max_running),
        };
        mistralrs_core::set_prefix_cache_max_bytes(options.prefix_cache_bytes);
        let runner = MistralRsBuilder::new(pipeline, scheduler, false, None)
            .with_model_id(options.model_id.clone())
            .with_no_prefix_cache(options.prefix_cache_sequences == 0)
            .with_prefix_cache_n(options.prefix_cache_sequences)
            .build()
            .await;

        let context_length = match &options.source {
            ModelSource::File(info) => info.context_length.min(max_seq_len),
            ModelSource::Hub { .. } => max_seq_len,
        };
        Ok(Self {
            runner,
            next_id: AtomicUsize::new(1),
            model_id: options.model_id,
            context_length,
            attach_pool: crate::pool::attach_processor(options.threads),
            vocab: grammars.as_ref().map(|factory| factory.tok_env().clone()),
            grammars,
            grammar_stop,
        })
    }

    /// Checks that an output format compiles into a grammar, so that a bad
    /// schema is the client's 400 rather than a failed generation.
    /// Compiling is CPU work bounded by llguidance's limits; it runs off the
    /// async threads.
    pub async fn check_format(&self, format: &OutputFormat) -> Result<(), EngineError> {
        let OutputFormat::JsonSchema(schema) = format else {
            return Ok(());
        };
        let factory = self.grammars.clone().ok_or_else(|| {
            EngineError::InvalidFormat("this model has no grammar support".into())
        })?;
        let grammar = TopLevelGrammar::from_json_schema(schema.clone());
        tokio::task::spawn_blocking(move || factory.create_parser(grammar).map(drop))
            .await
            .map_err(|e| EngineError::Rejected(format!("grammar check panicked: {e}")))?
            .map_err(|e| EngineError::InvalidFormat(format!("{e:#}")))
    }

    /// Tokens the chat template turns these messages into, generation prompt
    /// included: exactly the prompt the model will see.
    pub async fn prompt_tokens(&self, messages: &[EngineMessage]) -> Result<usize, EngineError> {
        let (tx, mut rx) = mpsc::channel(1);
        // mistralrs's engine thread panics when a tokenization's answer
        // finds the receiver gone, as it did when the client went away
        // meanwhile, and every running generation died with the thread.
        // So the receiver lives in a task of its own until the answer
        // comes, whatever happens to this request.
        let answer = tokio::spawn(async move { rx.recv().await });
        let request = Request::Tokenize(TokenizationRequest {
            text: Either::Left(messages.to_vec()),
            tools: None,
            add_generation_prompt: true,
            add_special_tokens: true,
            enable_thinking: None,
            reasoning_effort: None,
            response: tx,
        });
        self.send(request).await?;
        match answer.await {
            Ok(Some(Ok(tokens))) => Ok(tokens.len()),
            Ok(Some(Err(e))) => Err(EngineError::Rejected(format!("{e:#}"))),
            Ok(None) | Err(_) => Err(EngineError::Closed),
        }
    }

    /// Starts a generation: the stream yields text, then how it ended;
    /// dropping it cancels the sequence.
    pub async fn generate(&self, params: GenerateParams) -> Result<Stream, EngineError> {
        // Room for every chunk the request can produce, so the engine thread
        // never waits on a slow client (which would stall every sequence in
        // the batch); memory stays bounded by max_tokens.
        let (tx, rx) = mpsc::channel(params.max_tokens + 4);
        let logprobs = params.logprobs;
        let (constraint, stop_toks) = self.constraint(params.format, params.stop);
        // mistralrs reads a missing temperature as 1 and samples greedily
        // only below 1e-7, which matches OpenAI's semantics as they are.
        let sampling = SamplingParams {
            temperature: params.temperature,
            top_k: None,
            top_p: params.top_p,
            min_p: None,
            top_n_logprobs: logprobs.unwrap_or(0),
            frequency_penalty: params.frequency_penalty,
            presence_penalty: params.presence_penalty,
            repetition_penalty: None,
            stop_toks,
            max_len: Some(params.max_tokens),
            logits_bias: None,
            n_choices: 1,
            dry_params: None,
            seed: params.seed,
        };
        let request = NormalRequest {
            messages: RequestMessage::Chat {
                messages: params.messages,
                enable_thinking: None,
                reasoning_effort: None,
            },
            sampling_params: sampling,
            response: tx,
            return_logprobs: logprobs.is_some(),
            is_streaming: true,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            constraint,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: self.attach_pool.clone().map(|p| vec![p]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        };
        self.send(Request::Normal(Box::new(request))).await?;
        Ok(Stream {
            rx,
            vocab: logprobs.and(self.vocab.clone()),
        })
    }

    /// The grammar constraint for a format, and the stops that go with it.
    fn constraint(
        &self,
        format: OutputFormat,
        stop: Vec<String>,
    ) -> (Constraint, Option<StopTokens>) {
        let schema = match format {
            OutputFormat::Text => {
                return (
                    Constraint::None,
                    (!stop.is_empty()).then_some(StopTokens::Seqs(stop)),
                );
            }
            OutputFormat::JsonSchema(schema) => schema,
        };
        let stops = match (&self.grammar_stop, stop.is_empty()) {
            (None, true) => None,
            (None, false) => Some(StopTokens::Seqs(stop)),
            (Some((id, _)), true) => Some(StopTokens::Ids(vec![*id])),
            // A special token's text encodes to that one token, which
            // mistralrs then stops on as a token, beside the client's strings.
            (Some((_, text)), false) => {
                let mut seqs = stop;
                seqs.push(text.clone());
                Some(StopTokens::Seqs(seqs))
            }
        };
        (Constraint::JsonSchema(schema), stops)
    }

    async fn send(&self, request: Request) -> Result<(), EngineError> {
        let sender = self
            .runner
            .get_sender(None)
            .map_err(|e| EngineError::Rejected(e.to_string()))?;
        sender.send(request).await.map_err(|_| EngineError::Closed)
    }
}

/// How a sequence ended, with the engine's own counts and timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub finish_reason: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// A token and its log-probability: the natural logarithm of its
/// probability in the model's distribution at that position (after
/// frequency and presence penalties, before temperature and `top_p`; where
/// a grammar overruled the model's pick, over the tokens it allows).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text; a token that holds part of a character shows
    /// U+FFFD where `bytes` has the exact bytes. Special tokens (the end of
    /// a turn) by their name.
    pub text: String,
    pub bytes: Vec<u8>,
    /// At most 0, at least [`LOGPROB_FLOOR`].
    pub logprob: f64,
}

/// Where a log-probability is too small to be told from zero probability
/// (a token the grammar rules out): OpenAI reports these as -9999.
pub const LOGPROB_FLOOR: f64 = -9999.0;

/// One generated token's log-probability, with the most likely tokens at
/// its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    /// Most likely first; as many as the request asked for.
    pub top: Vec<TokenLogprob>,
}

/// One step of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// New text, if any; `done` on the last piece (which may carry text).
    /// With log-probabilities asked for, each piece is one generated token
    /// and carries its [`TokenLogprobs`], even when its text is held back
    /// (part of a character, which comes with the next piece's text).
    Chunk {
        text: Option<String>,
        logprobs: Option<TokenLogprobs>,
        done: Option<Done>,
    },
    /// The engine failed the sequence; the last piece.
    Failed(String),
}

/// A running generation's output. Dropping it cancels the sequence at the
/// engine's next decode step (mistralrs notices the closed channel).
pub struct Stream {
    rx: mpsc::Receiver<Response>,
    /// Set when log-probabilities were asked for (and the model has a
    /// vocabulary to spell tokens with).
    vocab: Option<TokEnv>,
}

impl Stream {
    /// The next piece; `None` when the engine closed the stream without a
    /// last piece.
    pub async fn recv(&mut self) -> Option<Piece> {
        Some(match self.rx.recv().await? {
            Response::Chunk(chunk) => {
                let choice = chunk.choices.into_iter().next();
                let text = choice
                    .as_ref()
                    .and_then(|c| c.delta.content.clone())
                    .filter(|t| !t.is_empty());
                let logprobs = choice
                    .as_ref()
                    .and_then(|c| c.logprobs.as_ref())
                    .map(|l| token_logprobs(l, self.vocab.as_ref()));
                let done = chunk.usage.map(|usage| Done {
                    finish_reason: choice
                        .and_then(|c| c.finish_reason)
                        .unwrap_or_else(|| "stop".to_string()),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    prefill_seconds: f64::from(usage.total_prompt_time_sec),
                    decode_seconds: f64::from(usage.total_completion_time_sec),
                });
                Piece::Chunk {
                    text,
                    logprobs,
                    done,
                }
            }
            Response::InternalError(e) | Response::ValidationError(e) => {
                Piece::Failed(e.to_string())
            }
            Response::ModelError(e, _) => Piece::Failed(e),
            _ => Piece::Failed("unexpected engine response".to_string()),
        })
    }
}

/// mistralrs's logprobs of one token in plain terms. Tokens are spelt from
/// the vocabulary's bytes: mistralrs decodes a token's text lossily, and
/// the chosen token's `token` is the text streamed with it, not its own.
fn token_logprobs(l: &ResponseLogprob, vocab: Option<&TokEnv>) -> TokenLogprobs {
    let token = |id: u32, fallback: &[u8], logprob: f32| {
        let bytes = vocab.map_or_else(
            || fallback.to_vec(),
            |v| v.tok_trie().decode_ext(&[id], true),
        );
        let logprob = f64::from(logprob);
        TokenLogprob {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            // NaN fails the comparison and lands on the floor too.
            logprob: if logprob >= LOGPROB_FLOOR {
                logprob.min(0.0)
            } else {
                LOGPROB_FLOOR
            },
        }
    };
    TokenLogprobs {
        chosen: token(
            l.token_id,
            l.bytes.as_deref().unwrap_or_default(),
            l.logprob,
        ),
        top: l
            .top_logprobs
            .iter()
            .map(|t| {
                let text = t.bytes.as_deref().unwrap_or_default();
                token(t.token, text.as_bytes(), t.logprob)
            })
            .collect(),
    }
}

/// Builds one engine message from a role and its text.
pub fn message(role: &str, text: String) -> EngineMessage {
    let mut m = IndexMap::new();
    m.insert("role".to_string(), Either::Left(role.to_string()));
    m.insert("content".to_string(), Either::Left(text));
    m
}
