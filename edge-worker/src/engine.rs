//! The model engine: loads the GGUF through `mistralrs-core` and turns chat
//! requests into a stream of engine responses.
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
use mistralrs_core::{
    AutoDeviceMapParams, Constraint, CustomLogitsProcessor, DefaultSchedulerMethod,
    DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig, MessageContent, MistralRs,
    MistralRsBuilder, ModelDType, NormalRequest, Request, RequestMessage, Response, SamplingParams,
    SchedulerConfig, StopTokens, TokenSource, TokenizationRequest,
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
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("failed to load the model: {0}")]
    Load(String),
    #[error("the engine stopped accepting requests")]
    Closed,
    #[error("the engine rejected the request: {0}")]
    Rejected(String),
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

        let max_seq_len = pipeline.lock().await.get_metadata().max_seq_len;
        let max_running = std::num::NonZeroUsize::new(options.max_running.max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let scheduler = SchedulerConfig::DefaultScheduler {
            method: DefaultSchedulerMethod::Fixed(max_running),
        };
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
        })
    }

    /// Tokens the chat template turns these messages into, generation prompt
    /// included: exactly the prompt the model will see.
    pub async fn prompt_tokens(&self, messages: &[EngineMessage]) -> Result<usize, EngineError> {
        let (tx, mut rx) = mpsc::channel(1);
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
        match rx.recv().await {
            Some(Ok(tokens)) => Ok(tokens.len()),
            Some(Err(e)) => Err(EngineError::Rejected(format!("{e:#}"))),
            None => Err(EngineError::Closed),
        }
    }

    /// Starts a generation. The receiver yields `Response::Chunk`s, the last
    /// carrying a finish reason and usage; dropping it cancels the sequence.
    pub async fn generate(
        &self,
        params: GenerateParams,
    ) -> Result<mpsc::Receiver<Response>, EngineError> {
        // Room for every chunk the request can produce, so the engine thread
        // never waits on a slow client (which would stall every sequence in
        // the batch); memory stays bounded by max_tokens.
        let (tx, rx) = mpsc::channel(params.max_tokens + 4);
        // mistralrs reads a missing temperature as 1 and samples greedily
        // only below 1e-7, which matches OpenAI's semantics as they are.
        let sampling = SamplingParams {
            temperature: params.temperature,
            top_k: None,
            top_p: params.top_p,
            min_p: None,
            top_n_logprobs: 0,
            frequency_penalty: params.frequency_penalty,
            presence_penalty: params.presence_penalty,
            repetition_penalty: None,
            stop_toks: (!params.stop.is_empty()).then_some(StopTokens::Seqs(params.stop)),
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
            return_logprobs: false,
            is_streaming: true,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            constraint: Constraint::None,
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
        Ok(rx)
    }

    async fn send(&self, request: Request) -> Result<(), EngineError> {
        let sender = self
            .runner
            .get_sender(None)
            .map_err(|e| EngineError::Rejected(e.to_string()))?;
        sender.send(request).await.map_err(|_| EngineError::Closed)
    }
}

/// Builds one engine message from a role and its text.
pub fn message(role: &str, text: String) -> EngineMessage {
    let mut m = IndexMap::new();
    m.insert("role".to_string(), Either::Left(role.to_string()));
    m.insert("content".to_string(), Either::Left(text));
    m
}
