//! `Engine`: a model file opened on the GPU with its tokenizer and its generation state, the
//! one object apps, the command line and the bindings start from.
//!
//! The engine owns the model, the tokenizer and the [`Generator`] that knows what the KV cache
//! holds, so nothing outside can change the model behind the generator's back: every call
//! that changes the model (adapters, direct forwards through [`Engine::model_mut`]) drops
//! the cached conversation with it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::adapter::{GpuAdapter, LoraWeights};
use crate::error::{Error, Result};
use crate::generate::{GenerateParams, Generation, Generator};
use crate::gguf::GgufFile;
use crate::gpu::{Gpu, GpuOptions};
use crate::hf::Checkpoint;
use crate::model::{Llama, ModelOptions, Quantizing, Weights};
use crate::tokenizer::{ChatMessage, Tokenizer};

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub gpu: GpuOptions,
    pub model: ModelOptions,
}

pub struct Engine {
    path: PathBuf,
    /// What the model is called, without the user's folders (see [`Engine::model_name`]).
    name: String,
    tokenizer: Tokenizer,
    model: Llama,
    /// Made on the first generation; `None` again whenever the model changes.
    generator: Option<Generator>,
    /// The applied adapters' weights on the CPU, where known (evaluation runs them in its
    /// batched trainer forward).
    lora: Option<Vec<(LoraWeights, f32)>>,
    load_secs: f64,
}

impl Engine {
    /// Opens `path` (a GGUF file, or a Hugging Face checkpoint folder with `config.json`,
    /// safetensors and `tokenizer.json`), or the default model when `None`; the name of a
    /// model the project fetches (`qwen2.5-1.5b`) opens that one (fetched and cached on first
    /// use), see [`crate::fetch::resolve`].
    pub fn load(path: Option<&Path>, opts: EngineOptions) -> Result<Engine> {
        let path = crate::fetch::resolve(path)?;
        let start = Instant::now();
        let gpu = Gpu::new(opts.gpu)?;
        let file_stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let (tokenizer, model, name) = if Checkpoint::is_checkpoint(&path) {
            let ckpt = Checkpoint::open(&path)?;
            let tokenizer = Tokenizer::from_json_file(&path.join("tokenizer.json"))?;
            let weights = match opts.model.quantize {
                Some(ty) => Weights::load(&gpu, &Quantizing { inner: &ckpt, ty }, &ckpt.config)?,
                None => Weights::load(&gpu, &ckpt, &ckpt.config)?,
            };
            let model = Llama::new(gpu, ckpt.config.clone(), weights, opts.model)?;
            let name = ckpt.name_or_path().unwrap_or(file_stem);
            (tokenizer, model, name)
        } else {
            let gguf = GgufFile::open(&path)?;
            let known = crate::fetch::KNOWN_MODELS
                .iter()
                .find(|m| path.file_name().is_some_and(|f| f == m.file_name));
            let name = match known {
                Some(m) => m.hf_id.to_string(),
                None => gguf
                    .get_str("general.name")
                    .map(str::to_string)
                    .unwrap_or(file_stem),
            };
            (
                Tokenizer::from_gguf(&gguf)?,
                Llama::load(gpu, &gguf, opts.model)?,
                name,
            )
        };
        Ok(Engine {
            path,
            name,
            tokenizer,
            model,
            generator: None,
            lora: Some(Vec::new()),
            load_secs: start.elapsed().as_secs_f64(),
        })
    }

    /// The model file or folder this engine was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's name for others to find it by: the Hugging Face id of a model this project
    /// fetches, a checkpoint's `_name_or_path`, GGUF `general.name`, or the file's name; never
    /// the user's folders. Saved adapters record it as their base model.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The model, for direct forwards (scoring, logits). The cached conversation is dropped:
    /// whatever runs on the model now is not what the generator cached.
    pub fn model_mut(&mut self) -> &mut Llama {
        self.forget();
        &mut self.model
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.model.gpu
    }

    /// Seconds the load took.
    pub fn load_secs(&self) -> f64 {
        self.load_secs
    }

    /// Generates from a text prompt (special tokens in it are honoured). The KV cache is
    /// reused for the longest prefix shared with the previous call's prompt and output.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt, true)?;
        self.generate_tokens(&ids, params, on_text)
    }

    /// Generates from prompt token ids; see [`Engine::generate`].
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut generator = match self.generator.take() {
            Some(g) => g,
            None => Generator::new(&mut self.model)?,
        };
        let result =
            generator.generate_tokens(&mut self.model, &self.tokenizer, prompt, params, on_text);
        if result.is_err() {
            // A failed call may have left the cache half written: start the next one clean.
            generator.reset(&mut self.model);
        }
        self.generator = Some(generator);
        result
    }

    /// Renders `messages` with the model's chat template (adding the assistant's turn) and
    /// generates the answer. Earlier turns still in the cache are not run again.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let prompt = self.tokenizer.apply_chat_template(messages, true)?;
        self.generate(&prompt, params, on_text)
    }

    /// Tokens whose keys and values are cached (the last call's prompt and output).
    pub fn cached_tokens(&self) -> &[u32] {
        self.generator
            .as_ref()
            .map(Generator::cached_tokens)
            .unwrap_or(&[])
    }

    /// Forgets the cached conversation.
    pub fn reset(&mut self) {
        self.forget();
    }

    fn forget(&mut self) {
        if let Some(g) = self.generator.as_mut() {
            g.reset(&mut self.model);
        }
        self.model.truncate(0);
    }

    /// Applies these uploaded adapters (unmerged, weighted); an empty list returns to the
    /// base model. The cached conversation is dropped.
    pub fn apply_adapters(&mut self, adapters: Vec<(Arc<GpuAdapter>, f32)>) -> Result<()> {
        self.forget();
        self.lora = adapters.is_empty().then(Vec::new);
        self.model.set_adapters(adapters)
    }

    /// Uploads and applies these adapters (unmerged, weighted), keeping their weights for
    /// [`Engine::evaluate`]; an empty list returns to the base model.
    pub fn apply_lora(&mut self, adapters: Vec<(LoraWeights, f32)>) -> Result<()> {
        let mut gpu_adapters = Vec::with_capacity(adapters.len());
        for (w, weight) in &adapters {
            let gpu = self.model.gpu.clone();
            let up = GpuAdapter::upload(&gpu, w, &self.model.cfg)?;
            gpu_adapters.push((Arc::new(up), *weight));
        }
        self.apply_adapters(gpu_adapters)?;
        self.lora = Some(adapters);
        Ok(())
    }

    /// Each label's probability after `template` (with `{text}` replaced by `text`), on the
    /// model with its adapters; see [`crate::task`]. Drops the cached conversation.
    pub fn classify(
        &mut self,
        text: &str,
        labels: &[String],
        template: &str,
    ) -> Result<Vec<crate::task::LabelScore>> {
        self.forget();
        crate::task::classify(&mut self.model, &self.tokenizer, text, labels, template)
    }

    /// Accuracy, per-label figures and the confusion matrix over `data`, many examples per
    /// forward pass, with the adapters applied through [`Engine::apply_lora`] or
    /// [`Engine::set_adapters`].
    pub fn evaluate(
        &self,
        data: &[crate::task::Labelled],
        labels: &[String],
        template: &str,
        opts: &crate::task::EvalOptions,
    ) -> Result<crate::task::Evaluation> {
        let lora = self.lora.as_ref().ok_or_else(|| {
            Error::Invalid(
                "evaluate needs the adapters' weights: apply them with apply_lora or set_adapters"
                    .into(),
            )
        })?;
        let combined = match lora.as_slice() {
            [] => None,
            some => Some(LoraWeights::combine(some)?),
        };
        crate::task::evaluate(
            &self.model,
            &self.tokenizer,
            combined.as_ref(),
            data,
            labels,
            template,
            opts,
        )
    }
}

impl Engine {
    /// Loads PEFT adapters (`DIR` or `DIR:weight`) and applies them unmerged; an empty list
    /// returns to the base model.
    pub fn set_adapters(&mut self, specs: &[String]) -> Result<()> {
        let mut adapters = Vec::new();
        for spec in specs {
            let (dir, weight) = parse_adapter_spec(spec);
            adapters.push((LoraWeights::load(Path::new(dir))?, weight));
        }
        self.apply_lora(adapters)
    }

    /// Fine-tunes a LoRA adapter on `data` over this engine's frozen model (see
    /// [`crate::finetune::fine_tune`]); padding uses the tokenizer's EOS. Apply the result
    /// with `engine.apply_adapters(vec![(result.adapter.clone(), 1.0)])` or save
    /// `result.weights` as a PEFT folder.
    pub fn fine_tune(
        &self,
        data: &crate::dataset::Dataset,
        config: &crate::finetune::TrainConfig,
        run: &crate::finetune::RunOptions,
        listener: &mut dyn FnMut(&crate::finetune::TrainEvent),
    ) -> Result<crate::finetune::FineTuned> {
        let pad = self.tokenizer.eos_ids().first().copied().unwrap_or(0);
        crate::finetune::fine_tune(&self.model, data, pad, config, run, listener)
    }

    /// One line with the figures users compare engines by.
    pub fn report(&self, g: &Generation) -> String {
        let c = self.gpu().counters.snapshot();
        let t = &g.timings;
        format!(
            "load {:.2} s | prefill {} tok in {:.3} s ({:.1} tok/s) | decode {} tok in {:.3} s ({:.1} tok/s) | peak GPU memory {:.1} MiB (weights {:.1} MiB) | stop: {:?}",
            self.load_secs,
            t.prefill_tokens,
            t.prefill_secs,
            t.prefill_tok_s(),
            t.decode_tokens,
            t.decode_secs,
            t.decode_tok_s(),
            c.peak_bytes as f64 / (1 << 20) as f64,
            self.model.weights.gpu_bytes() as f64 / (1 << 20) as f64,
            g.stop_reason,
        )
    }
}

/// `DIR` or `DIR:weight` (weight 1 when absent or not a number).
pub fn parse_adapter_spec(spec: &str) -> (&str, f32) {
    match spec.rsplit_once(':') {
        Some((d, w)) if w.parse::<f32>().is_ok() => (d, w.parse::<f32>().unwrap_or(1.0)),
        _ => (spec, 1.0),
    }
}

/// A streaming callback that prints to standard output as text arrives.
pub fn stream_to_stdout() -> impl FnMut(&str) -> bool {
    |s: &str| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
        true
    }
}

/// Interactive chat: reads user turns from `input` until an empty line or end of input,
/// streams the answers to stdout. The KV cache is kept between turns, so each turn runs only
/// its new tokens.
pub fn chat_repl(
    engine: &mut Engine,
    system: Option<String>,
    params: &GenerateParams,
    input: &mut dyn BufRead,
) -> Result<()> {
    let mut messages: Vec<ChatMessage> = system
        .into_iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    engine.reset();
    eprintln!("chat: type a message; an empty line or end of input quits");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        let g = engine.chat(&messages, params, &mut stream_to_stdout())?;
        println!();
        let t = &g.timings;
        eprintln!(
            "[{} prompt tokens ({} new) at {:.1} tok/s, {} tokens at {:.1} tok/s]",
            t.prompt_tokens,
            t.prefill_tokens,
            t.prefill_tok_s(),
            t.decode_tokens,
            t.decode_tok_s()
        );
        messages.push(ChatMessage::new("assistant", g.text));
    }
}
