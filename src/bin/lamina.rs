//! `lamina`: the command line for users and scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lamina::engine::{Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams, Session};
use lamina::gpu::GpuOptions;
use lamina::hf::Checkpoint;
use lamina::model::ModelOptions;
use lamina::tokenizer::ChatMessage;

#[derive(Parser)]
#[command(
    name = "lamina",
    version,
    about = "Run small language models on your own GPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF file (default: SmolLM2-135M-Instruct, fetched and cached on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// KV cache positions.
    #[arg(long, default_value_t = 2048)]
    context: u32,
    /// Do not use shader-f16 even where the device has it.
    #[arg(long)]
    no_f16: bool,
    /// Do not use subgroup operations even where the device has them.
    #[arg(long)]
    no_subgroups: bool,
    /// Keep the KV cache in f16 where the device has shader-f16 (half the memory; logits move
    /// by ~1e-3 relative).
    #[arg(long)]
    kv_f16: bool,
    /// PEFT LoRA adapter folder to apply, optionally weighted: `DIR` or `DIR:0.5`
    /// (repeatable; adapters add up).
    #[arg(long)]
    adapter: Vec<String>,
}

impl ModelArgs {
    fn load(&self) -> lamina::Result<Engine> {
        let mut engine = self.load_base()?;
        if !self.adapter.is_empty() {
            engine.set_adapters(&self.adapter)?;
        }
        Ok(engine)
    }

    fn load_base(&self) -> lamina::Result<Engine> {
        Engine::load(
            self.model.as_deref(),
            EngineOptions {
                gpu: GpuOptions {
                    allow_f16: !self.no_f16,
                    allow_subgroups: !self.no_subgroups,
                },
                model: ModelOptions {
                    context: self.context,
                    kv_f16: self.kv_f16,
                    ..Default::default()
                },
            },
        )
    }
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Candidates before top-p (0 = whole vocabulary; at most 256).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// 1.0 = off.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl SampleArgs {
    fn params(&self) -> GenerateParams {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed,
            },
            stop: self.stop.clone(),
            cancel: None,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Continue a prompt (raw text; add --chat to wrap it in the model's chat template).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        #[arg(long)]
        prompt: String,
        /// Render the prompt as a user message through the chat template.
        #[arg(long)]
        chat: bool,
        /// Print timing and memory figures to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Interactive chat on standard input.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// System message (default: the template's own).
        #[arg(long)]
        system: Option<String>,
    },
    /// Print token ids of TEXT as a JSON array.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        text: String,
        /// Add BOS where the model asks for it.
        #[arg(long)]
        add_special: bool,
    },
    /// Write the logits of every prompt position to a safetensors file
    /// (`input_ids` i64 [T], `logits` f32 [T, vocab]).
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Architecture, tensor types and sizes, device and features.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Fetch and verify a model (the default one unless --model says otherwise), print its path.
    Fetch {
        #[arg(long, value_enum, default_value_t = FetchModel::Smollm2)]
        model: FetchModel,
    },
}

/// The models `lamina fetch` knows.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FetchModel {
    /// SmolLM2-135M-Instruct Q4_1 (the default model).
    Smollm2,
    /// Qwen2.5-Coder-0.5B-Instruct Q4_K_M.
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_05b,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> lamina::Result<()> {
    match cli.cmd {
        Cmd::Generate {
            model,
            sample,
            prompt,
            chat,
            stats,
        } => {
            let mut engine = model.load()?;
            let text = if chat {
                engine
                    .tokenizer
                    .apply_chat_template(&[ChatMessage::new("user", prompt)], true)?
            } else {
                prompt
            };
            let params = sample.params();
            let Engine {
                tokenizer, model, ..
            } = &mut engine;
            let mut session = Session::new(model, tokenizer)?;
            let g = session.generate(&text, &params, &mut lamina::engine::stream_to_stdout())?;
            println!();
            if stats {
                eprintln!("{}", engine.report(&g));
            }
            Ok(())
        }
        Cmd::Chat {
            model,
            sample,
            system,
        } => {
            let mut engine = model.load()?;
            let params = sample.params();
            let Engine {
                tokenizer, model, ..
            } = &mut engine;
            lamina::engine::chat_repl(
                model,
                tokenizer,
                system,
                &params,
                &mut std::io::stdin().lock(),
            )
        }
        Cmd::Tokenize {
            model,
            text,
            add_special,
        } => {
            let path = resolve(model.model.as_deref())?;
            let tok = if Checkpoint::is_checkpoint(&path) {
                lamina::tokenizer::Tokenizer::from_json_file(&path.join("tokenizer.json"))?
            } else {
                lamina::tokenizer::Tokenizer::from_gguf(&lamina::gguf::GgufFile::open(&path)?)?
            };
            let ids = tok.encode(&text, add_special)?;
            println!("{}", serde_json::to_string(&ids).unwrap());
            Ok(())
        }
        Cmd::Logits { model, prompt, out } => {
            let mut engine = model.load()?;
            let ids = engine.tokenizer.encode(&prompt, true)?;
            let logits = engine.model.forward_all(&ids)?;
            write_logits(&out, &ids, &logits, engine.model.cfg.vocab as usize)?;
            eprintln!(
                "wrote {} ({} tokens x {} logits)",
                out.display(),
                ids.len(),
                engine.model.cfg.vocab
            );
            Ok(())
        }
        Cmd::Info { model } => info(&model),
        Cmd::Fetch { model } => {
            let path = match model {
                FetchModel::Smollm2 => lamina::fetch::default_model()?,
                FetchModel::Qwen25_05b => lamina::fetch::qwen25_05b()?,
            };
            println!("{}", path.display());
            Ok(())
        }
    }
}

fn resolve(model: Option<&Path>) -> lamina::Result<PathBuf> {
    match model {
        Some(p) => Ok(p.to_path_buf()),
        None => lamina::fetch::default_model(),
    }
}

fn write_logits(path: &Path, ids: &[u32], logits: &[f32], vocab: usize) -> lamina::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let err = |e: String| lamina::Error::File {
        path: path.to_path_buf(),
        detail: e,
    };
    let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let idb: &[u8] = bytemuck::cast_slice(&ids64);
    let lb: &[u8] = bytemuck::cast_slice(logits);
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "input_ids".to_string(),
        TensorView::new(Dtype::I64, vec![ids.len()], idb).map_err(|e| err(e.to_string()))?,
    );
    tensors.insert(
        "logits".to_string(),
        TensorView::new(Dtype::F32, vec![ids.len(), vocab], lb).map_err(|e| err(e.to_string()))?,
    );
    let bytes = safetensors::serialize(&tensors, None).map_err(|e| err(e.to_string()))?;
    lamina::fetch::write_atomic(path, &bytes)
}

fn info(model: &ModelArgs) -> lamina::Result<()> {
    let path = resolve(model.model.as_deref())?;
    if Checkpoint::is_checkpoint(&path) {
        let ckpt = Checkpoint::open(&path)?;
        println!("checkpoint: {} (Hugging Face layout)", path.display());
        println!("{:#?}", ckpt.config);
        return print_device(model);
    }
    let g = lamina::gguf::GgufFile::open(&path)?;
    let cfg = lamina::model::Config::from_gguf(&g)?;
    println!(
        "file: {} ({:.1} MiB, GGUF v{})",
        path.display(),
        g.file_len() as f64 / 1048576.0,
        g.version
    );
    if let Ok(name) = g.get_str("general.name") {
        println!("name: {name}");
    }
    println!("architecture: {}", cfg.arch);
    println!(
        "layers {} | embedding {} | heads {} (kv {}) x {} | feed-forward {} | vocab {} | context {} | rope theta {} | rms eps {:e}",
        cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_ff, cfg.vocab, cfg.ctx_train, cfg.rope_theta, cfg.rms_eps
    );
    let mut by_type: BTreeMap<u32, (lamina::quant::GgmlType, usize, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let e = by_type.entry(t.ty.id()).or_insert((t.ty, 0, 0));
        e.1 += 1;
        e.2 += t.n_bytes;
    }
    println!("tensors: {}", g.tensors.len());
    for (ty, n, bytes) in by_type.into_values() {
        let support = if ty.supported() {
            ""
        } else {
            " (not supported)"
        };
        println!(
            "  {:>5}: {n:4} tensors, {:8.1} MiB{support}",
            format!("{ty:?}"),
            bytes as f64 / 1048576.0
        );
    }
    print_device(model)
}

fn print_device(model: &ModelArgs) -> lamina::Result<()> {
    let gpu = lamina::gpu::Gpu::new(GpuOptions {
        allow_f16: !model.no_f16,
        allow_subgroups: !model.no_subgroups,
    })?;
    println!("device: {}", gpu.describe());
    println!(
        "limits: max storage binding {} MiB, max buffer {} MiB",
        gpu.limits.max_storage_buffer_binding_size >> 20,
        gpu.limits.max_buffer_size >> 20
    );
    Ok(())
}
