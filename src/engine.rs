//! `Engine`: a model file opened on the GPU with its tokenizer, the one object apps, the
//! command line and the bindings start from.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::adapter::{GpuAdapter, LoraWeights};
use crate::error::Result;
use crate::generate::{GenerateParams, Generation, Session};
use crate::gguf::GgufFile;
use crate::gpu::{Gpu, GpuOptions};
use crate::hf::Checkpoint;
use crate::model::{Llama, ModelOptions, Weights};
use crate::tokenizer::{ChatMessage, Tokenizer};

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub gpu: GpuOptions,
    pub model: ModelOptions,
}

pub struct Engine {
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    pub model: Llama,
    pub load_secs: f64,
}

impl Engine {
    /// Opens `path` (a GGUF file, or a Hugging Face checkpoint folder with `config.json`,
    /// safetensors and `tokenizer.json`), or the default model (fetched and cached on first
    /// use) when `None`.
    pub fn load(path: Option<&Path>, opts: EngineOptions) -> Result<Engine> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => crate::fetch::default_model()?,
        };
        let start = Instant::now();
        let gpu = Gpu::new(opts.gpu)?;
        let (tokenizer, model) = if Checkpoint::is_checkpoint(&path) {
            let ckpt = Checkpoint::open(&path)?;
            let tokenizer = Tokenizer::from_json_file(&path.join("tokenizer.json"))?;
            let weights = Weights::load(&gpu, &ckpt, &ckpt.config)?;
            let model = Llama::new(gpu, ckpt.config.clone(), weights, opts.model)?;
            (tokenizer, model)
        } else {
            let gguf = GgufFile::open(&path)?;
            (
                Tokenizer::from_gguf(&gguf)?,
                Llama::load(gpu, &gguf, opts.model)?,
            )
        };
        Ok(Engine {
            path,
            tokenizer,
            model,
            load_secs: start.elapsed().as_secs_f64(),
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.model.gpu
    }
}

impl Engine {
    /// Loads PEFT adapters (`DIR` or `DIR:weight`) and applies them unmerged; an empty list
    /// returns to the base model.
    pub fn set_adapters(&mut self, specs: &[String]) -> Result<()> {
        let mut adapters = Vec::new();
        for spec in specs {
            let (dir, weight) = parse_adapter_spec(spec);
            let weights = LoraWeights::load(Path::new(dir))?;
            let gpu = self.model.gpu.clone();
            let adapter = GpuAdapter::upload(&gpu, &weights, &self.model.cfg)?;
            adapters.push((Arc::new(adapter), weight));
        }
        self.model.set_adapters(adapters)
    }

    /// Fine-tunes a LoRA adapter on `data` over this engine's frozen model (see
    /// [`crate::finetune::fine_tune`]); padding uses the tokenizer's EOS. Apply the result
    /// with `model.set_adapters(vec![(result.adapter.clone(), 1.0)])` or save
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
    model: &mut Llama,
    tokenizer: &Tokenizer,
    system: Option<String>,
    params: &GenerateParams,
    input: &mut dyn BufRead,
) -> Result<()> {
    let mut messages: Vec<ChatMessage> = system
        .into_iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut session = Session::new(model, tokenizer)?;
    eprintln!("chat: type a message; an empty line or end of input quits");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        let prompt = tokenizer.apply_chat_template(&messages, true)?;
        let g = session.generate(&prompt, params, &mut stream_to_stdout())?;
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
