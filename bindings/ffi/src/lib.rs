//! Lamina for Swift, Kotlin and Python, through uniffi.
//!
//! This crate is the only place FFI concerns live: it turns the core crate's Rust API
//! (borrowed slices, closures, `usize`, nested error types) into records, enums, callback
//! interfaces and one flat error that uniffi can carry. Every call blocks; apps call it from a
//! background thread. An [`Engine`] is safe to share between threads: calls on it run one at
//! a time, and [`Engine::cancel`] may be called from any thread while one runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Instant;

use lamina::adapter::LoraWeights;
use lamina::dataset::{Dataset, DatasetOptions, Format, DEFAULT_TEXT_TEMPLATE};
use lamina::finetune::RunOptions;
use lamina::generate::{GenerateParams as CoreParams, SamplingParams, StopReason as CoreStop};
use lamina::gpu::{GpuError, GpuOptions};
use lamina::model::ModelOptions;
use lamina::tokenizer::ChatMessage as CoreMessage;

uniffi::setup_scaffolding!("lamina");

/// Every failure, with a message that says what went wrong and where (file, line, tensor).
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum LaminaError {
    /// The model file or folder does not exist, or the default model could not be fetched.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model file is corrupt, truncated or of a kind Lamina does not run.
    #[error("{0}")]
    InvalidModel(String),
    /// A training row or data file is malformed (the message names the file or item, and
    /// the line).
    #[error("{0}")]
    InvalidData(String),
    /// An adapter does not fit this model (other layers, sizes or modules).
    #[error("{0}")]
    AdapterMismatch(String),
    /// The GPU could not be opened or a GPU operation failed.
    #[error("{0}")]
    Device(String),
    /// The GPU has not enough memory for what was asked.
    #[error("{0}")]
    OutOfMemory(String),
    /// `cancel()` stopped the call.
    #[error("{0}")]
    Cancelled(String),
    /// An argument is out of range or inconsistent (the message says which).
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// A listener threw; the call stopped there (the exception's text is in the message).
    #[error("{0}")]
    Listener(String),
}

/// What a listener throws, as the bindings see it: any exception of the app's (a
/// `LaminaError` from another engine included) arrives as `Failed` with its text. It is not
/// flat, so the foreign side can hand it back; the call then throws `LaminaError.Listener`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum ListenerError {
    #[error("the listener threw: {reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for ListenerError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        ListenerError::Failed { reason: e.reason }
    }
}

impl From<ListenerError> for LaminaError {
    fn from(e: ListenerError) -> Self {
        LaminaError::Listener(e.to_string())
    }
}

/// What a call was doing when the core failed: decides which case the error becomes.
#[derive(Clone, Copy)]
enum Doing {
    LoadModel,
    ReadData,
    LoadAdapter,
    WriteFile,
    Other,
}

fn error(e: lamina::Error, doing: Doing) -> LaminaError {
    use lamina::Error as E;
    let message = e.to_string();
    match (e, doing) {
        (E::Cancelled(_), _) => LaminaError::Cancelled(message),
        (E::Gpu(GpuError::OutOfMemory { .. }), _) => LaminaError::OutOfMemory(message),
        (E::Gpu(_), _) => LaminaError::Device(message),
        (E::Invalid(_), _) => LaminaError::InvalidArgument(message),
        (E::Gguf(_) | E::TensorType { .. } | E::Model(_), Doing::LoadModel) => {
            LaminaError::InvalidModel(message)
        }
        (E::File { .. } | E::Tokenizer(_) | E::Template(_), Doing::LoadModel) => {
            LaminaError::InvalidModel(message)
        }
        (E::File { .. } | E::Tokenizer(_) | E::Template(_), Doing::ReadData) => {
            LaminaError::InvalidData(message)
        }
        (E::Model(_), Doing::LoadAdapter) => LaminaError::AdapterMismatch(message),
        (E::File { .. }, Doing::LoadAdapter) => LaminaError::InvalidData(message),
        (E::Tokenizer(_) | E::Template(_), _) => LaminaError::InvalidArgument(message),
        (E::Gguf(_) | E::TensorType { .. } | E::Model(_), _) => LaminaError::InvalidModel(message),
        (E::File { .. }, _) => LaminaError::Io(message),
    }
}

/// How the engine opens the device and sizes the model's buffers.
#[derive(Debug, Clone, uniffi::Record)]
pub struct EngineOptions {
    /// KV cache positions (clamped to the model's training context).
    #[uniffi(default = 2048)]
    pub context_length: u32,
    /// Keep the KV cache in f16 where the device has it (half the memory; logits move by
    /// about 1e-3 relative).
    #[uniffi(default = false)]
    pub f16_kv_cache: bool,
    /// Use only the portable shader variants: no f16, no subgroups, no CPU-class kernels (for
    /// devices whose drivers misbehave, and for tests).
    #[uniffi(default = false)]
    pub force_fallback_shaders: bool,
    /// Quantize a Hugging Face checkpoint's float weight matrices to this type while loading
    /// (`"q8_0"`, `"q4_k"`, ... as `lamina quantize --type` names them), one tensor at a
    /// time, so a checkpoint that would not fit dequantized does; GGUF files load as they are.
    #[uniffi(default = None)]
    pub quantize: Option<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            context_length: 2048,
            f16_kv_cache: false,
            force_fallback_shaders: false,
            quantize: None,
        }
    }
}

/// Sampling and stopping for `generate` and `chat`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GenerateParams {
    #[uniffi(default = 256)]
    pub max_tokens: u32,
    /// 0 is greedy (always the most probable token).
    #[uniffi(default = 0.8)]
    pub temperature: f32,
    /// Candidates kept before top-p (0: the whole vocabulary).
    #[uniffi(default = 40)]
    pub top_k: u32,
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    /// 1.0 is off.
    #[uniffi(default = 1.0)]
    pub repeat_penalty: f32,
    #[uniffi(default = 64)]
    pub repeat_last_n: u32,
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Generation stops before any of these strings; they are not part of the text.
    #[uniffi(default)]
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum StopReason {
    /// The model ended its answer (end-of-sequence or end-of-turn token).
    EndOfSequence,
    /// One of the stop strings appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The listener returned false.
    Listener,
}

#[derive(Debug, Clone, uniffi::Record)]
pub struct Generation {
    pub text: String,
    pub tokens_generated: u32,
    pub stop_reason: StopReason,
    pub prompt_tokens: u32,
    /// Prompt tokens actually run; the rest came from the KV cache of earlier calls.
    pub prefill_tokens: u32,
    pub prefill_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

/// Receives the text of a generation as it is produced.
#[uniffi::export(with_foreign)]
pub trait TokenListener: Send + Sync {
    /// A new piece of text; return false to stop the generation here. An exception stops
    /// it too, and the call throws `LaminaError.Listener` with the exception's text.
    fn on_token(&self, piece: String) -> Result<bool, ListenerError>;
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct LabelScore {
    pub label: String,
    /// Normalised over the labels given: the scores of one call sum to 1.
    pub probability: f64,
    /// The model's log-probability of the label's tokens after the prompt.
    pub log_prob: f64,
}

/// One training example held by the app.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum TrainingExample {
    /// The loss is taken on the completion only.
    PromptCompletion { prompt: String, completion: String },
    /// `text` goes through the template; the completion is `" " + label`, the same
    /// continuation `classify` scores.
    TextLabel { text: String, label: String },
    /// A conversation through the model's chat template; the loss is taken on the
    /// assistant's turns.
    Chat { messages: Vec<ChatMessage> },
}

/// What to train on.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum TrainingData {
    /// A `.jsonl`, `.json` or `.csv` file, as `lamina train` reads it. `template` (with
    /// `{text}`) applies to text/label rows.
    File {
        path: String,
        template: Option<String>,
    },
    /// Examples held in memory (all of one kind). `template` applies to `TextLabel` ones
    /// (default `"{text}\nLabel:"`).
    Examples {
        examples: Vec<TrainingExample>,
        template: Option<String>,
    },
}

/// A LoRA fine-tuning run. Every field has a default.
#[derive(Debug, Clone, uniffi::Record)]
pub struct TrainConfig {
    /// Passes over the training examples (ignored when `max_steps` ends the run first).
    #[uniffi(default = 1)]
    pub epochs: u32,
    /// Stop after this many optimizer steps (0: no limit).
    #[uniffi(default = 0)]
    pub max_steps: u32,
    /// Sequences per optimizer step.
    #[uniffi(default = 4)]
    pub batch_size: u32,
    /// Longest example in tokens; longer ones keep their end (the completion).
    #[uniffi(default = 256)]
    pub max_length: u32,
    #[uniffi(default = 2e-4)]
    pub learning_rate: f32,
    #[uniffi(default = 0)]
    pub warmup_steps: u32,
    #[uniffi(default = 8)]
    pub rank: u32,
    #[uniffi(default = 16.0)]
    pub alpha: f32,
    /// Projections that get an adapter, in PEFT's names (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`); empty: all seven.
    #[uniffi(default)]
    pub targets: Vec<String>,
    /// Layers that get an adapter; empty: every layer (or the last `last_layers`).
    #[uniffi(default)]
    pub layers: Vec<u32>,
    /// Only the last this many layers get an adapter (0: unset).
    #[uniffi(default = 0)]
    pub last_layers: u32,
    /// Share of the examples held out to report a validation loss.
    #[uniffi(default = 0.1)]
    pub validation_fraction: f32,
    /// Folder where a checkpoint is kept (and resumed from with `resume`); none: no
    /// checkpoints.
    #[uniffi(default = None)]
    pub checkpoint_dir: Option<String>,
    #[uniffi(default = 10)]
    pub checkpoint_every: u32,
    #[uniffi(default = false)]
    pub resume: bool,
    #[uniffi(default = 42)]
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            max_length: 256,
            learning_rate: 2e-4,
            warmup_steps: 0,
            rank: 8,
            alpha: 16.0,
            targets: Vec::new(),
            layers: Vec::new(),
            last_layers: 0,
            validation_fraction: 0.1,
            checkpoint_dir: None,
            checkpoint_every: 10,
            resume: false,
            seed: 42,
        }
    }
}

impl TrainConfig {
    fn core(&self) -> lamina::finetune::TrainConfig {
        let mut c = lamina::finetune::TrainConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            max_len: self.max_length,
            lr: self.learning_rate,
            warmup_steps: self.warmup_steps,
            validation_fraction: self.validation_fraction,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            ..Default::default()
        };
        c.lora.r = self.rank;
        c.lora.alpha = self.alpha;
        if !self.targets.is_empty() {
            c.lora.targets = self.targets.clone();
        }
        if !self.layers.is_empty() {
            c.lora.layers = Some(self.layers.clone());
        }
        if self.last_layers > 0 {
            c.lora.last_layers = Some(self.last_layers);
        }
        c
    }
}

/// Progress of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum TrainEvent {
    Started {
        total_steps: u32,
        train_examples: u32,
        validation_examples: u32,
        /// First step of this run (after a resumed checkpoint's).
        first_step: u32,
    },
    Step {
        step: u32,
        total_steps: u32,
        /// Epochs done, fractional.
        epoch: f64,
        loss: f64,
        learning_rate: f32,
        /// Tokens (padding excluded) per second so far.
        tokens_per_sec: f64,
        eta_secs: f64,
    },
    Validation {
        step: u32,
        loss: f64,
    },
    /// A complete checkpoint is on disk.
    CheckpointWritten {
        step: u32,
        path: String,
    },
    Finished {
        steps: u32,
        cancelled: bool,
    },
}

/// Receives a run's progress.
#[uniffi::export(with_foreign)]
pub trait TrainListener: Send + Sync {
    /// Return false to stop the run after this step; the call then returns a report with
    /// `cancelled` set (and the adapter trained so far). An exception stops it too, and the
    /// call throws `LaminaError.Listener` with the exception's text.
    fn on_event(&self, event: TrainEvent) -> Result<bool, ListenerError>;
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ValidationLoss {
    pub step: u32,
    pub loss: f64,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TrainReport {
    pub steps: u32,
    /// The listener stopped the run early.
    pub cancelled: bool,
    pub train_examples: u32,
    pub validation_examples: u32,
    /// Mean loss of each step.
    pub losses: Vec<f64>,
    pub validation_losses: Vec<ValidationLoss>,
    pub tokens_per_sec: f64,
    pub seconds: f64,
    pub peak_gpu_bytes: u64,
}

/// A loaded adapter and the weight it is applied with.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct AdapterWeight {
    pub name: String,
    #[uniffi(default = 1.0)]
    pub scale: f32,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct DeviceInfo {
    pub adapter_name: String,
    /// "Vulkan", "Metal", "Dx12".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu", ...
    pub device_type: String,
    pub f16: bool,
    pub subgroups: bool,
    pub bytes_in_use: u64,
    pub peak_bytes: u64,
}

/// A model opened on the GPU, with its tokenizer, its KV cache and its adapters.
#[derive(uniffi::Object)]
pub struct Engine {
    inner: Mutex<State>,
    /// The thread holding `inner`, so that a listener calling back into the engine from
    /// that thread gets an error instead of waiting on itself forever.
    holder: Mutex<Option<ThreadId>>,
    /// Every call in flight (running or waiting for `inner`): what `cancel()` stops.
    calls: Mutex<Vec<Arc<CallFlags>>>,
    /// For `device_info` and `model_name`, which never wait for a running call.
    gpu: Arc<lamina::gpu::Gpu>,
    model_name: String,
}

struct State {
    engine: lamina::engine::Engine,
    /// Adapters loaded by name, applied through `set_adapters`.
    adapters: BTreeMap<String, LoraWeights>,
    /// The adapter the last `fine_tune` produced.
    trained: Option<LoraWeights>,
    dropout: f32,
}

/// A lock that survives a panic in an earlier call (uniffi turns panics into exceptions):
/// the state is whole between calls, since every call that fails resets what it touched.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call's flags: `stop` is what the core polls (set by `cancel()` or by a listener that
/// returns false); `cancelled` says that `cancel()` set it.
#[derive(Default)]
struct CallFlags {
    stop: Arc<AtomicBool>,
    cancelled: AtomicBool,
}

/// A call in flight, registered for `cancel()` from before it waits for the engine until it
/// returns.
struct Call<'a> {
    engine: &'a Engine,
    flags: Arc<CallFlags>,
}

impl<'a> Call<'a> {
    fn start(engine: &'a Engine) -> Call<'a> {
        let flags = Arc::new(CallFlags::default());
        lock(&engine.calls).push(flags.clone());
        Call { engine, flags }
    }

    fn stop_flag(&self) -> Arc<AtomicBool> {
        self.flags.stop.clone()
    }

    fn cancelled(&self) -> bool {
        self.flags.cancelled.load(Ordering::SeqCst)
    }

    /// `Cancelled` if `cancel()` came while this call waited or prepared.
    fn check(&self, what: &str) -> Result<(), LaminaError> {
        if self.cancelled() {
            return Err(LaminaError::Cancelled(format!(
                "{what} cancelled before it started"
            )));
        }
        Ok(())
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        lock(&self.engine.calls).retain(|f| !Arc::ptr_eq(f, &self.flags));
    }
}

/// The engine's state, held by this thread until dropped.
struct Held<'a> {
    guard: MutexGuard<'a, State>,
    holder: &'a Mutex<Option<ThreadId>>,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *lock(self.holder) = None;
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Engine {
    /// Waits for the engine. A listener that calls back into the engine (on the thread
    /// running its call) gets `InvalidArgument` at once: waiting would never end.
    fn state(&self) -> Result<Held<'_>, LaminaError> {
        let me = std::thread::current().id();
        if *lock(&self.holder) == Some(me) {
            return Err(LaminaError::InvalidArgument(
                "the engine was called from inside one of its own listeners; only cancel(), \
                 device_info() and model_name() may be"
                    .into(),
            ));
        }
        let guard = lock(&self.inner);
        *lock(&self.holder) = Some(me);
        Ok(Held {
            guard,
            holder: &self.holder,
        })
    }

    fn run_generation(
        &self,
        prompt: Prompt,
        params: GenerateParams,
        listener: Option<Arc<dyn TokenListener>>,
    ) -> Result<Generation, LaminaError> {
        let call = Call::start(self);
        let mut state = self.state()?;
        call.check("generation")?;
        let core = CoreParams {
            max_tokens: params.max_tokens as usize,
            sampling: SamplingParams {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                min_p: params.min_p,
                repeat_penalty: params.repeat_penalty,
                repeat_last_n: params.repeat_last_n as usize,
                seed: params.seed,
            },
            stop: params.stop,
            cancel: Some(call.stop_flag()),
            ignore_eos: false,
        };
        // Once the listener has stopped the generation or thrown, it is not called again
        // (the core still flushes held-back text).
        let mut thrown = None;
        let mut stopped = false;
        let mut on_text = |piece: &str| {
            let Some(l) = &listener else { return true };
            if stopped {
                return false;
            }
            let go_on = l.on_token(piece.to_string()).unwrap_or_else(|e| {
                thrown.get_or_insert(LaminaError::from(e));
                false
            });
            stopped = !go_on;
            go_on
        };
        let g = match prompt {
            Prompt::Text(p) => state.engine.generate(&p, &core, &mut on_text),
            Prompt::Chat(m) => state.engine.chat(&m, &core, &mut on_text),
        }
        .map_err(|e| error(e, Doing::Other))?;
        if let Some(e) = thrown {
            return Err(e);
        }
        if g.stop_reason == CoreStop::Cancelled && call.cancelled() {
            return Err(LaminaError::Cancelled(format!(
                "generation cancelled after {} tokens",
                g.tokens.len()
            )));
        }
        let t = &g.timings;
        Ok(Generation {
            text: g.text,
            tokens_generated: u32_of(g.tokens.len()),
            stop_reason: match g.stop_reason {
                CoreStop::Eos => StopReason::EndOfSequence,
                CoreStop::StopString => StopReason::StopString,
                CoreStop::Length => StopReason::MaxTokens,
                CoreStop::Cancelled => StopReason::Listener,
            },
            prompt_tokens: u32_of(t.prompt_tokens),
            prefill_tokens: u32_of(t.prefill_tokens),
            prefill_tokens_per_sec: if t.prefill_tokens > 0 {
                t.prefill_tok_s()
            } else {
                0.0
            },
            decode_tokens_per_sec: if t.decode_tokens > 0 {
                t.decode_tok_s()
            } else {
                0.0
            },
        })
    }
}

enum Prompt {
    Text(String),
    Chat(Vec<CoreMessage>),
}

fn dataset(
    data: &TrainingData,
    tok: &lamina::tokenizer::Tokenizer,
    max_len: u32,
) -> Result<Dataset, LaminaError> {
    let text_label = |template: &Option<String>| Format::TextLabel {
        template: template
            .clone()
            .unwrap_or_else(|| DEFAULT_TEXT_TEMPLATE.to_string()),
        label_map: None,
    };
    let mut opts = DatasetOptions {
        max_len: max_len as usize,
        ..Default::default()
    };
    match data {
        TrainingData::File { path, template } => {
            if template.is_some() {
                opts.format = Some(text_label(template));
            }
            if !Path::new(path).exists() {
                return Err(LaminaError::Io(format!(
                    "{path}: no such file or directory"
                )));
            }
            Dataset::load(Path::new(path), tok, &opts).map_err(|e| error(e, Doing::ReadData))
        }
        TrainingData::Examples { examples, template } => {
            if let Some(TrainingExample::TextLabel { .. }) = examples.first() {
                opts.format = Some(text_label(template));
            }
            let rows = examples
                .iter()
                .map(|e| match e {
                    TrainingExample::PromptCompletion { prompt, completion } => {
                        serde_json::json!({ "prompt": prompt, "completion": completion })
                    }
                    TrainingExample::TextLabel { text, label } => {
                        serde_json::json!({ "text": text, "label": label })
                    }
                    TrainingExample::Chat { messages } => serde_json::json!({
                        "messages": messages
                            .iter()
                            .map(|m| serde_json::json!({ "role": m.role, "content": m.content }))
                            .collect::<Vec<_>>()
                    }),
                })
                .collect();
            Dataset::from_rows("examples", rows, tok, &opts).map_err(|e| error(e, Doing::ReadData))
        }
    }
}

#[uniffi::export]
impl Engine {
    /// Opens a GGUF file or a Hugging Face checkpoint folder; `None` opens the default model
    /// (SmolLM2-135M-Instruct, fetched, sha256-checked and cached on first use), and the name
    /// of another model the project fetches (`qwen2.5-0.5b`, `qwen2.5-1.5b`) opens that one.
    #[uniffi::constructor]
    pub fn new(
        model_path: Option<String>,
        options: EngineOptions,
    ) -> Result<Arc<Engine>, LaminaError> {
        // A path, or the name of a model the project fetches (`qwen2.5-1.5b`).
        if let Some(p) = &model_path {
            if !Path::new(p).exists() && lamina::fetch::by_name(p).is_none() {
                return Err(LaminaError::ModelNotFound(format!(
                    "{p}: no such file or directory"
                )));
            }
        }
        let path = lamina::fetch::resolve(model_path.as_deref().map(Path::new)).map_err(|e| {
            LaminaError::ModelNotFound(format!("the model could not be fetched: {e}"))
        })?;
        if options.context_length < 2 {
            return Err(LaminaError::InvalidArgument(format!(
                "context_length {} (at least 2)",
                options.context_length
            )));
        }
        let quantize = options
            .quantize
            .as_deref()
            .map(|name| {
                name.parse::<lamina::quant::GgmlType>()
                    .map_err(|e| LaminaError::InvalidArgument(format!("quantize \"{name}\": {e}")))
            })
            .transpose()?;
        // The defaults honour LAMINA_NO_F16, LAMINA_NO_SUBGROUPS and LAMINA_GPU_KERNELS, as
        // the command line does.
        let fallback = options.force_fallback_shaders;
        let defaults = GpuOptions::default();
        let opts = lamina::engine::EngineOptions {
            gpu: GpuOptions {
                allow_f16: defaults.allow_f16 && !fallback,
                allow_subgroups: defaults.allow_subgroups && !fallback,
                allow_cpu_kernels: defaults.allow_cpu_kernels && !fallback,
            },
            model: ModelOptions {
                context: options.context_length,
                kv_f16: options.f16_kv_cache,
                quantize,
                ..Default::default()
            },
        };
        let engine = lamina::engine::Engine::load(Some(&path), opts)
            .map_err(|e| error(e, Doing::LoadModel))?;
        Ok(Arc::new(Engine {
            gpu: engine.gpu().clone(),
            model_name: engine.model_name().to_string(),
            inner: Mutex::new(State {
                engine,
                adapters: BTreeMap::new(),
                trained: None,
                dropout: 0.0,
            }),
            holder: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
        }))
    }

    /// Continues `prompt` (raw text; special tokens in it are honoured). The KV cache is
    /// reused for the prefix shared with the previous call.
    #[uniffi::method(default(listener = None))]
    pub fn generate(
        &self,
        prompt: String,
        params: GenerateParams,
        listener: Option<Arc<dyn TokenListener>>,
    ) -> Result<Generation, LaminaError> {
        self.run_generation(Prompt::Text(prompt), params, listener)
    }

    /// Answers the conversation through the model's chat template. Earlier turns still in
    /// the KV cache are not run again.
    #[uniffi::method(default(listener = None))]
    pub fn chat(
        &self,
        messages: Vec<ChatMessage>,
        params: GenerateParams,
        listener: Option<Arc<dyn TokenListener>>,
    ) -> Result<Generation, LaminaError> {
        let messages = messages
            .into_iter()
            .map(|m| CoreMessage::new(&m.role, m.content))
            .collect();
        self.run_generation(Prompt::Chat(messages), params, listener)
    }

    /// Each label's probability after `template` (with `{text}` replaced by `text`),
    /// normalised over the labels; a label of several tokens scores the sum of its tokens'
    /// log-probabilities. Uses the applied adapters.
    pub fn classify(
        &self,
        text: String,
        labels: Vec<String>,
        template: String,
    ) -> Result<Vec<LabelScore>, LaminaError> {
        let mut state = self.state()?;
        let scores = state
            .engine
            .classify(&text, &labels, &template)
            .map_err(|e| error(e, Doing::Other))?;
        Ok(scores
            .into_iter()
            .map(|s| LabelScore {
                label: s.label,
                probability: s.probability,
                log_prob: s.log_prob,
            })
            .collect())
    }

    /// Fine-tunes a LoRA adapter over the frozen model. The result is kept for
    /// `save_adapter`; it is not applied (load it with `load_adapter` and `set_adapters`).
    /// `cancel()` makes this throw `Cancelled` within a step, leaving any checkpoint
    /// complete; a listener that returns false ends the run with a report instead.
    #[uniffi::method(default(listener = None))]
    pub fn fine_tune(
        &self,
        data: TrainingData,
        config: TrainConfig,
        listener: Option<Arc<dyn TrainListener>>,
    ) -> Result<TrainReport, LaminaError> {
        let call = Call::start(self);
        let mut state = self.state()?;
        let core = config.core();
        core.validate().map_err(|e| error(e, Doing::Other))?;
        let data = dataset(&data, state.engine.tokenizer(), config.max_length)?;
        // A cancel during the waiting or the tokenizing stops here, before a step (and a
        // checkpoint over an earlier run's) is made.
        call.check("fine-tuning")?;
        let run = RunOptions {
            checkpoint_dir: config.checkpoint_dir.as_ref().map(PathBuf::from),
            resume: config.resume,
            cancel: Some(call.stop_flag()),
        };
        let start = Instant::now();
        let mut train_examples = 0;
        let mut validation_examples = 0;
        let mut tokens_per_sec = 0.0;
        let mut peak = 0;
        let stop = call.stop_flag();
        let mut thrown = None;
        let mut on_event = |event: &lamina::finetune::TrainEvent| {
            use lamina::finetune::TrainEvent as E;
            let out = match event {
                E::Started {
                    total_steps,
                    train_examples: t,
                    validation_examples: v,
                    first_step,
                    ..
                } => {
                    train_examples = u32_of(*t);
                    validation_examples = u32_of(*v);
                    TrainEvent::Started {
                        total_steps: *total_steps,
                        train_examples: u32_of(*t),
                        validation_examples: u32_of(*v),
                        first_step: *first_step,
                    }
                }
                E::Step(s) => {
                    tokens_per_sec = s.tokens_per_sec;
                    peak = s.peak_gpu_bytes;
                    TrainEvent::Step {
                        step: s.step,
                        total_steps: s.total_steps,
                        epoch: s.epoch,
                        loss: s.loss,
                        learning_rate: s.lr,
                        tokens_per_sec: s.tokens_per_sec,
                        eta_secs: s.eta_secs,
                    }
                }
                E::Validation { step, loss } => TrainEvent::Validation {
                    step: *step,
                    loss: *loss,
                },
                E::Checkpoint { step, path } => TrainEvent::CheckpointWritten {
                    step: *step,
                    path: path.display().to_string(),
                },
                E::Finished { steps, cancelled } => TrainEvent::Finished {
                    steps: *steps,
                    cancelled: *cancelled,
                },
            };
            // A listener that threw is not called again.
            if let (Some(l), None) = (&listener, &thrown) {
                match l.on_event(out) {
                    Ok(true) => {}
                    Ok(false) => stop.store(true, Ordering::SeqCst),
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        thrown = Some(LaminaError::from(e));
                    }
                }
            }
        };
        let result = state
            .engine
            .fine_tune(&data, &core, &run, &mut on_event)
            .map_err(|e| error(e, Doing::Other))?;
        state.dropout = core.lora.dropout;
        let steps = result.steps;
        let cancelled = result.cancelled;
        let report = TrainReport {
            steps,
            cancelled,
            train_examples,
            validation_examples,
            losses: result.losses,
            validation_losses: result
                .validation_losses
                .into_iter()
                .map(|(step, loss)| ValidationLoss { step, loss })
                .collect(),
            tokens_per_sec,
            seconds: start.elapsed().as_secs_f64(),
            peak_gpu_bytes: peak,
        };
        state.trained = Some(result.weights);
        if let Some(e) = thrown {
            return Err(e);
        }
        if cancelled && call.cancelled() {
            let kept = match &config.checkpoint_dir {
                Some(dir) => format!("; the checkpoint in {dir} is complete"),
                None => String::new(),
            };
            return Err(LaminaError::Cancelled(format!(
                "fine-tuning cancelled after {steps} steps (the adapter trained so far is kept \
                 for save_adapter){kept}"
            )));
        }
        Ok(report)
    }

    /// Stops every call in flight on other threads (`generate`, `chat`, `fine_tune`, running
    /// or waiting for the engine) within one token or step; each throws `Cancelled`. Does
    /// nothing when no call is in flight, and never waits.
    pub fn cancel(&self) {
        for call in lock(&self.calls).iter() {
            call.cancelled.store(true, Ordering::SeqCst);
            call.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Writes the adapter of the last `fine_tune` as a PEFT folder (`adapter_config.json`,
    /// `adapter_model.safetensors`) that Hugging Face PEFT loads.
    pub fn save_adapter(&self, path: String) -> Result<(), LaminaError> {
        let state = self.state()?;
        let trained = state.trained.as_ref().ok_or_else(|| {
            LaminaError::InvalidArgument("no adapter to save: run fine_tune first".into())
        })?;
        trained
            .save(
                Path::new(&path),
                state.dropout,
                Some(state.engine.model_name()),
            )
            .map_err(|e| error(e, Doing::WriteFile))
    }

    /// Loads a PEFT adapter folder under `name` (replacing one of that name), checking that
    /// it fits this model. It is applied only through `set_adapters`.
    pub fn load_adapter(&self, path: String, name: String) -> Result<(), LaminaError> {
        let dir = Path::new(&path);
        if !dir.is_dir() {
            return Err(LaminaError::Io(format!(
                "{path}: not a folder (an adapter is a PEFT folder with adapter_config.json and \
                 adapter_model.safetensors)"
            )));
        }
        if !dir.join("adapter_config.json").is_file() {
            return Err(LaminaError::Io(format!(
                "{path}: no adapter_config.json (a checkpoint keeps its adapter in {path}/checkpoint)"
            )));
        }
        let mut state = self.state()?;
        let weights =
            LoraWeights::load(Path::new(&path)).map_err(|e| error(e, Doing::LoadAdapter))?;
        weights
            .check_fits(&state.engine.model().cfg)
            .map_err(|e| error(e, Doing::LoadAdapter))?;
        state.adapters.insert(name, weights);
        Ok(())
    }

    /// Applies these loaded adapters, unmerged and weighted, in place of the ones applied
    /// before; the base model is not reloaded. An empty list returns to the base model.
    pub fn set_adapters(&self, adapters: Vec<AdapterWeight>) -> Result<(), LaminaError> {
        let mut state = self.state()?;
        let mut chosen = Vec::with_capacity(adapters.len());
        for a in &adapters {
            if !a.scale.is_finite() {
                return Err(LaminaError::InvalidArgument(format!(
                    "adapter '{}': scale {} is not a finite number",
                    a.name, a.scale
                )));
            }
            let w = state.adapters.get(&a.name).ok_or_else(|| {
                let known: Vec<&str> = state.adapters.keys().map(String::as_str).collect();
                LaminaError::InvalidArgument(format!(
                    "no adapter named '{}' (loaded: {})",
                    a.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            chosen.push((w.clone(), a.scale));
        }
        state
            .engine
            .apply_lora(chosen)
            .map_err(|e| error(e, Doing::LoadAdapter))
    }

    /// Returns to the base model (the loaded adapters stay loaded).
    pub fn clear_adapters(&self) -> Result<(), LaminaError> {
        self.set_adapters(Vec::new())
    }

    /// Token ids of `text` as a prompt (with the model's BOS where it adds one).
    pub fn tokenize(&self, text: String) -> Result<Vec<u32>, LaminaError> {
        let state = self.state()?;
        state
            .engine
            .tokenizer()
            .encode(&text, true)
            .map_err(|e| error(e, Doing::Other))
    }

    /// The device the engine runs on, and the GPU memory it holds now and at most.
    pub fn device_info(&self) -> DeviceInfo {
        let gpu = &self.gpu;
        let counters = gpu.counters.snapshot();
        DeviceInfo {
            adapter_name: gpu.info.name.clone(),
            backend: format!("{:?}", gpu.info.backend),
            device_type: format!("{:?}", gpu.info.device_type),
            f16: gpu.f16,
            subgroups: gpu.subgroups,
            bytes_in_use: counters.bytes_in_use,
            peak_bytes: counters.peak_bytes,
        }
    }

    /// The model's name (its Hugging Face id where known).
    pub fn model_name(&self) -> String {
        self.model_name.clone()
    }
}
