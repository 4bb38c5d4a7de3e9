//! `lamina`: the command line for users and scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use lamina::engine::{Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams};
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
    /// GGUF file or Hugging Face folder, or a model this project fetches and caches: smollm2
    /// (the default), qwen2.5-0.5b, qwen2.5-1.5b.
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
    /// Quantize the float weight matrices (a Hugging Face checkpoint's F32/F16/BF16) to this
    /// type while loading: q2_k ... q8_0, f16 (see `lamina quantize`).
    #[arg(long, value_parser = parse_type)]
    quantize: Option<lamina::quant::GgmlType>,
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
                    ..GpuOptions::default()
                },
                model: ModelOptions {
                    context: self.context,
                    kv_f16: self.kv_f16,
                    quantize: self.quantize,
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
            cancel: Some(interrupt_flag()),
            ignore_eos: false,
        }
    }
}

/// The labels and prompt of a classification task.
#[derive(Args, Clone)]
struct TaskArgs {
    /// Comma-separated labels, scored as the continuations " LABEL".
    #[arg(long, value_delimiter = ',', required = true)]
    labels: Vec<String>,
    /// The prompt, with `{text}` standing for the text.
    #[arg(long, default_value = lamina::dataset::DEFAULT_TEXT_TEMPLATE)]
    template: String,
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
    /// Classify TEXT among labels: prints the most probable label, then each label's
    /// probability after the prompt (normalised over the labels).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        task: TaskArgs,
        text: String,
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy, per-label precision/recall/F1 and the confusion matrix on a labelled file
    /// (JSONL `{"text", "label"}`, or CSV with a header), many examples per forward pass.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        task: TaskArgs,
        /// JSONL/JSON/CSV with text and label fields.
        #[arg(long)]
        data: PathBuf,
        /// The text and label fields, if not `text,label`.
        #[arg(long)]
        columns: Option<String>,
        /// Examples per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Longest prompt + label in tokens (longer texts lose their start).
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        /// Print one JSON object instead of the report.
        #[arg(long)]
        json: bool,
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
    /// Prefill, decode and LoRA training speed on this device, with dispatches, submits and
    /// bytes read back per decoded token and peak GPU memory (like llama.cpp's llama-bench).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens for the prefill measurement.
        #[arg(short = 'p', long = "prompt-tokens", default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to decode, timed without the prefill.
        #[arg(short = 'n', long = "decode-tokens", default_value_t = 64)]
        decode_tokens: usize,
        /// Training shape BATCHxTOKENS (LoRA r 8 on all seven projections), or "none".
        #[arg(long, default_value = "4x128")]
        train: String,
        /// Timed repetitions of each measurement (after one warm-up); the best is reported.
        #[arg(short = 'r', long, default_value_t = 2)]
        repetitions: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Architecture, tensor types and sizes, device and features.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Fine-tune a LoRA adapter on a data file and save it in the PEFT layout.
    ///
    /// Data: JSONL with {"prompt","completion"}, {"messages":[...]} (chat template; loss on
    /// assistant turns) or {"text","label"} (through --template); or CSV with a header.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Training data (.jsonl, .json or .csv).
        #[arg(long)]
        data: PathBuf,
        /// Adapter folder to write (adapter_model.safetensors + adapter_config.json); the
        /// checkpoint goes to OUT/checkpoint.
        #[arg(long)]
        out: PathBuf,
        /// TOML file with any of the training settings (flags given here override it).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Box<TrainFlags>,
        /// Continue from OUT/checkpoint (same config and data).
        #[arg(long)]
        resume: bool,
        /// Print one line per step instead of a progress bar.
        #[arg(long)]
        log: bool,
    },
    /// Loss and every LoRA gradient of one batch, for comparison with other frameworks.
    ///
    /// The batch is a safetensors file with `input_ids`, `labels` (-100 = no loss) and
    /// `attention_mask` (i64 [B, T], right padding). The output holds `loss` and
    /// `<PEFT name>.grad` for every lora_A / lora_B tensor.
    Grad {
        #[command(flatten)]
        model: ModelArgs,
        /// The batch file (names may carry a `batch.` prefix).
        #[arg(long)]
        batch: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fold LoRA adapters into the base weights and write a new GGUF file, or a Hugging Face
    /// checkpoint folder with `--format hf`.
    Merge {
        /// GGUF file (default: SmolLM2-135M-Instruct).
        #[arg(long)]
        model: Option<PathBuf>,
        /// PEFT adapter folder, optionally weighted: `DIR` or `DIR:0.5` (repeatable).
        #[arg(long, required = true)]
        adapter: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// Type of the merged matrices: f16 (default), q8_0, f32, or same (the base's own
        /// type: smallest file, but a 4-bit re-quantization rounds much of the update away).
        /// With `--format hf` every tensor is written in f16 or f32.
        #[arg(long, default_value = "f16")]
        r#type: String,
        /// gguf: one GGUF file; hf: a folder with config.json, model.safetensors and the
        /// tokenizer files, which transformers' from_pretrained loads.
        #[arg(long, value_enum, default_value_t = MergeFormat::Gguf)]
        format: MergeFormat,
    },
    /// Re-quantize a GGUF model's weight matrices to one type and write a new GGUF file.
    Quantize {
        /// q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, f16 or f32. Matrices
        /// whose rows are not a multiple of 256 get the k-quant's fallback (q4_0, q5_0, q5_1,
        /// q8_0), as llama.cpp does; norms and biases are copied.
        #[arg(long = "type")]
        ty: String,
        /// Source: a GGUF file, a model name (smollm2, qwen2.5-0.5b, qwen2.5-1.5b), or a
        /// Hugging Face checkpoint folder (F32/F16/BF16; tokenizer and chat template carried
        /// over into the GGUF metadata).
        input: PathBuf,
        /// Output GGUF file (written atomically).
        out: PathBuf,
    },
    /// Fetch and verify a model (the default one unless --model says otherwise), print its path.
    Fetch {
        #[arg(long, value_enum, default_value_t = FetchModel::Smollm2)]
        model: FetchModel,
    },
}

/// Training settings on the command line; each overrides the config file's value.
#[derive(Args, Clone, Default)]
struct TrainFlags {
    #[arg(long)]
    epochs: Option<u32>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<u32>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<u32>,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    warmup_steps: Option<u32>,
    /// constant, linear or cosine.
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long)]
    weight_decay: Option<f32>,
    /// 0 = no clipping.
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// LoRA rank.
    #[arg(long)]
    rank: Option<u32>,
    #[arg(long)]
    alpha: Option<f32>,
    #[arg(long)]
    dropout: Option<f32>,
    /// Scale alpha / sqrt(r).
    #[arg(long)]
    rslora: bool,
    /// Comma-separated target modules (default: all seven projections).
    #[arg(long)]
    targets: Option<String>,
    /// Layers that get adapters: ranges and numbers, e.g. `22-29` or `0,5,10-12` (default:
    /// all). The backward stops at the lowest one, so the top layers tune much faster.
    #[arg(long)]
    layers: Option<String>,
    /// Only the last N layers get adapters.
    #[arg(long)]
    last_layers: Option<u32>,
    /// Longest example in tokens.
    #[arg(long)]
    max_len: Option<u32>,
    /// Share of examples held out for validation.
    #[arg(long)]
    validation: Option<f32>,
    #[arg(long)]
    eval_every: Option<u32>,
    #[arg(long)]
    checkpoint_every: Option<u32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Recompute activations in the backward (less memory, about a third slower).
    #[arg(long)]
    recompute: bool,
    /// Prompt template for {"text","label"} rows, `{text}` standing for the text.
    #[arg(long)]
    template: Option<String>,
    /// Two field names to read (CSV columns or JSON keys), e.g. `review,sentiment`.
    #[arg(long)]
    columns: Option<String>,
    /// Skip malformed rows (they are counted) instead of stopping at the first.
    #[arg(long)]
    skip_malformed: bool,
}

impl TrainFlags {
    fn apply(&self, c: &mut lamina::finetune::TrainConfig) -> lamina::Result<()> {
        macro_rules! set {
            ($($f:ident => $t:expr),*) => { $( if let Some(v) = self.$f { $t = v; } )* };
        }
        set!(epochs => c.epochs, max_steps => c.max_steps, batch_size => c.batch_size,
             grad_accum => c.grad_accum, lr => c.lr, warmup_steps => c.warmup_steps,
             weight_decay => c.weight_decay, max_grad_norm => c.max_grad_norm,
             rank => c.lora.r, alpha => c.lora.alpha, dropout => c.lora.dropout,
             max_len => c.max_len, validation => c.validation_fraction,
             eval_every => c.eval_every, checkpoint_every => c.checkpoint_every, seed => c.seed);
        if let Some(s) = &self.schedule {
            c.schedule = match s.as_str() {
                "constant" => lamina::finetune::Schedule::Constant,
                "linear" => lamina::finetune::Schedule::Linear,
                "cosine" => lamina::finetune::Schedule::Cosine,
                _ => {
                    return Err(lamina::Error::Invalid(format!(
                        "schedule '{s}' (constant, linear or cosine)"
                    )))
                }
            };
        }
        if self.rslora {
            c.lora.use_rslora = true;
        }
        if self.recompute {
            c.recompute = Some(true);
        }
        if let Some(t) = &self.targets {
            c.lora.targets = t.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(l) = &self.layers {
            c.lora.layers = Some(lamina::train::parse_layers(l)?);
        }
        if let Some(n) = self.last_layers {
            c.lora.last_layers = Some(n);
        }
        Ok(())
    }
}

/// The models `lamina fetch` knows.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FetchModel {
    /// SmolLM2-135M-Instruct Q4_1 (the default model).
    Smollm2,
    /// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB).
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_05b,
    /// Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.07 GB).
    #[value(name = "qwen2.5-1.5b")]
    Qwen25_15b,
}

/// Set by the first Ctrl-C: generation and training stop at the next token or step (training
/// writes a checkpoint first). A second Ctrl-C exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// The exit status of a command stopped by SIGINT, as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    lamina::gpu::two_software_threads_per_core();
    let flag = interrupt_flag();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED as i32);
        }
        eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to quit now)");
    });
    match run(Cli::parse()) {
        Ok(()) if interrupt_flag().load(Ordering::SeqCst) => ExitCode::from(EXIT_INTERRUPTED),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, lamina::Error::Cancelled(_)) {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
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
            let params = sample.params();
            let out = &mut lamina::engine::stream_to_stdout();
            let g = if chat {
                engine.chat(&[ChatMessage::new("user", prompt)], &params, out)?
            } else {
                engine.generate(&prompt, &params, out)?
            };
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
            lamina::engine::chat_repl(&mut engine, system, &params, &mut std::io::stdin().lock())
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
            let ids = engine.tokenizer().encode(&prompt, true)?;
            let vocab = engine.model().cfg.vocab;
            let logits = engine.model_mut().forward_all(&ids)?;
            write_logits(&out, &ids, &logits, vocab as usize)?;
            eprintln!(
                "wrote {} ({} tokens x {vocab} logits)",
                out.display(),
                ids.len(),
            );
            Ok(())
        }
        Cmd::Info { model } => info(&model),
        Cmd::Bench {
            model,
            prompt_tokens,
            decode_tokens,
            train,
            repetitions,
            json,
        } => {
            let train = match train.as_str() {
                "none" | "0" | "" => None,
                shape => Some(parse_shape(shape)?),
            };
            let mut engine = model.load()?;
            let opts = lamina::bench::BenchOptions {
                prompt_tokens,
                decode_tokens,
                train,
                repetitions,
            };
            let r = lamina::bench::run(&mut engine, &opts)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).expect("a report serializes")
                );
            } else {
                print_bench(&r);
            }
            Ok(())
        }
        Cmd::Classify {
            model,
            task,
            text,
            json,
        } => {
            let mut engine = model.load()?;
            let scores = engine.classify(&text, &task.labels, &task.template)?;
            if json {
                println!("{}", serde_json::json!({ "scores": scores }));
                return Ok(());
            }
            let best = scores
                .iter()
                .max_by(|a, b| a.probability.total_cmp(&b.probability))
                .map(|s| s.label.clone())
                .unwrap_or_default();
            println!("{best}");
            for s in &scores {
                println!("{}\t{:.4}", s.label, s.probability);
            }
            Ok(())
        }
        Cmd::Eval {
            model,
            task,
            data,
            columns,
            batch,
            max_len,
            json,
        } => {
            let engine = model.load()?;
            let cols = columns.as_ref().and_then(|c| {
                c.split_once(',')
                    .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            });
            let rows: Vec<lamina::task::Labelled> =
                lamina::dataset::read_labelled(&data, cols.as_ref())?
                    .into_iter()
                    .map(|(text, label)| lamina::task::Labelled { text, label })
                    .collect();
            let opts = lamina::task::EvalOptions {
                batch_examples: batch,
                max_len,
            };
            let e = engine.evaluate(&rows, &task.labels, &task.template, &opts)?;
            if json {
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
                return Ok(());
            }
            print!("{}", lamina::task::report(&e));
            println!("accuracy={:.4} n={}", e.accuracy, e.n);
            Ok(())
        }
        Cmd::Train {
            model,
            data,
            out,
            config,
            flags,
            resume,
            log,
        } => train(&model, &data, &out, config.as_deref(), &flags, resume, log),
        Cmd::Grad { model, batch, out } => grad(&model, &batch, &out),
        Cmd::Merge {
            model,
            adapter,
            out,
            r#type,
            format,
        } => {
            let path = resolve(model.as_deref())?;
            let gguf = lamina::gguf::GgufFile::open(&path)?;
            let mut adapters = Vec::new();
            for spec in &adapter {
                let (dir, weight) = lamina::engine::parse_adapter_spec(spec);
                adapters.push((lamina::adapter::LoraWeights::load(Path::new(dir))?, weight));
            }
            let ty: lamina::merge::MergeType = r#type.parse()?;
            let n = match format {
                MergeFormat::Gguf => lamina::merge::merge_into_gguf(&gguf, &adapters, ty, &out)?,
                MergeFormat::Hf => {
                    let tokenizer = lamina::tokenizer::Tokenizer::from_gguf(&gguf)?;
                    lamina::merge::merge_into_hf(&gguf, &tokenizer, &adapters, ty, &out)?
                }
            };
            eprintln!("merged {n} tensors into {}", out.display());
            Ok(())
        }
        Cmd::Quantize { ty, input, out } => {
            let ty = parse_type(&ty).map_err(lamina::Error::Invalid)?;
            let path = resolve(Some(&input))?;
            let r = if Checkpoint::is_checkpoint(&path) {
                let ckpt = Checkpoint::open(&path)?;
                let tok =
                    lamina::tokenizer::Tokenizer::from_json_file(&path.join("tokenizer.json"))?;
                lamina::merge::quantize_checkpoint(&ckpt, &tok, ty, &out)?
            } else {
                let gguf = lamina::gguf::GgufFile::open(&path)?;
                lamina::merge::quantize_gguf(&gguf, ty, &out)?
            };
            eprintln!(
                "{}: {} matrices in {ty:?}, {} in its fallback type, {} tensors copied, {:.1} MB",
                out.display(),
                r.quantized,
                r.fallback,
                r.copied,
                r.bytes as f64 / 1e6
            );
            Ok(())
        }
        Cmd::Fetch { model } => {
            let path = match model {
                FetchModel::Smollm2 => lamina::fetch::default_model()?,
                FetchModel::Qwen25_05b => lamina::fetch::qwen25_05b()?,
                FetchModel::Qwen25_15b => lamina::fetch::qwen25_15b()?,
            };
            println!("{}", path.display());
            Ok(())
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MergeFormat {
    Gguf,
    Hf,
}

fn parse_type(s: &str) -> Result<lamina::quant::GgmlType, String> {
    s.parse()
}

fn resolve(model: Option<&Path>) -> lamina::Result<PathBuf> {
    lamina::fetch::resolve(model)
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

/// "4x128" -> (4, 128).
fn parse_shape(s: &str) -> lamina::Result<(usize, usize)> {
    let bad = || {
        lamina::Error::Invalid(format!(
            "--train {s}: expected BATCHxTOKENS, e.g. 4x128, or none"
        ))
    };
    let (b, t) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (b, t): (usize, usize) = (
        b.trim().parse().map_err(|_| bad())?,
        t.trim().parse().map_err(|_| bad())?,
    );
    if b == 0 || t < 2 {
        return Err(bad());
    }
    Ok((b, t))
}

fn print_bench(r: &lamina::bench::BenchReport) {
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("model:   {} (loaded in {:.1} s)", r.model, r.load_s);
    println!("device:  {} ({}, {})", r.device, r.backend, r.driver);
    println!(
        "prefill: {:8.1} tok/s  ({} tokens)",
        r.prefill_tok_s, r.prefill_tokens
    );
    println!(
        "decode:  {:8.1} tok/s  ({} tokens, without the prefill; the device idles {:.2} ms a token while the host works)",
        r.decode_tok_s, r.decode_tokens, r.decode_host_gap_ms
    );
    for (name, t) in [
        ("train", &r.train),
        ("train (recompute)", &r.train_recompute),
    ] {
        if let Some(t) = t {
            println!(
                "{name}: {:8.1} tok/s  ({}, LoRA r 8, 7 targets: {:.1} s/step, peak GPU {:.0} MiB, {} dispatches and {} submits per step)",
                t.tok_s,
                r.train_shape.as_deref().unwrap_or(""),
                t.secs_per_step,
                mib(t.peak_gpu_bytes),
                t.dispatches_per_step,
                t.submits_per_step
            );
        }
    }
    println!("peak GPU: {:.0} MiB", mib(r.peak_gpu_bytes));
    println!(
        "per decoded token: {:.1} dispatches, {:.2} submits, {:.0} bytes read back",
        r.dispatches_per_token, r.submits_per_token, r.readback_bytes_per_token
    );
}

fn print_device(model: &ModelArgs) -> lamina::Result<()> {
    let gpu = lamina::gpu::Gpu::new(GpuOptions {
        allow_f16: !model.no_f16,
        allow_subgroups: !model.no_subgroups,
        ..GpuOptions::default()
    })?;
    println!("device: {}", gpu.describe());
    println!(
        "limits: max storage binding {} MiB, max buffer {} MiB",
        gpu.limits.max_storage_buffer_binding_size >> 20,
        gpu.limits.max_buffer_size >> 20
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train(
    model: &ModelArgs,
    data: &Path,
    out: &Path,
    config: Option<&Path>,
    flags: &TrainFlags,
    resume: bool,
    log: bool,
) -> lamina::Result<()> {
    use lamina::dataset::{Dataset, DatasetOptions, Format};
    use lamina::finetune::{fine_tune, RunOptions, TrainConfig, TrainEvent};
    let mut cfg = match config {
        Some(p) => TrainConfig::from_toml(&std::fs::read_to_string(p).map_err(|e| {
            lamina::Error::File {
                path: p.to_path_buf(),
                detail: e.to_string(),
            }
        })?)?,
        None => TrainConfig::default(),
    };
    flags.apply(&mut cfg)?;
    let engine = model.load_base()?;
    let opts = DatasetOptions {
        format: flags.template.as_ref().map(|t| Format::TextLabel {
            template: t.clone(),
            label_map: None,
        }),
        max_len: cfg.max_len as usize,
        skip_malformed: flags.skip_malformed,
        csv_columns: flags.columns.as_ref().and_then(|c| {
            c.split_once(',')
                .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        }),
        ..Default::default()
    };
    let dataset = Dataset::load(data, engine.tokenizer(), &opts)?;
    eprintln!(
        "{}: {} examples ({} skipped, {} truncated to {} tokens)",
        data.display(),
        dataset.len(),
        dataset.skipped.len(),
        dataset.truncated,
        cfg.max_len
    );
    let pad = engine.tokenizer().eos_ids().first().copied().unwrap_or(0);
    let bar = indicatif::ProgressBar::hidden();
    let mut listener = |e: &TrainEvent| match e {
        TrainEvent::Started {
            total_steps,
            train_examples,
            validation_examples,
            first_step,
            recompute,
        } => {
            eprintln!(
                "training {total_steps} steps on {train_examples} examples ({validation_examples} held out){}{}",
                if *first_step > 1 { format!(", resuming at step {first_step}") } else { String::new() },
                if *recompute { ", recomputing activations" } else { "" }
            );
            if !log {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(*total_steps as u64);
                bar.set_position(*first_step as u64 - 1);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
                    )
                    .unwrap(),
                );
            }
        }
        TrainEvent::Step(s) => {
            let msg = format!(
                "loss {:.4} | lr {:.2e} | grad norm {:.3}{} | {:.1} tok/s | peak GPU {:.0} MiB",
                s.loss,
                s.lr,
                s.grad_norm,
                if s.skipped {
                    " (not finite: skipped)"
                } else {
                    ""
                },
                s.tokens_per_sec,
                s.peak_gpu_bytes as f64 / 1048576.0
            );
            if log {
                eprintln!(
                    "step {}/{} epoch {:.2} {msg}",
                    s.step, s.total_steps, s.epoch
                );
            } else {
                bar.set_position(s.step as u64);
                bar.set_message(msg);
            }
        }
        TrainEvent::Validation { step, loss } => {
            bar.suspend(|| eprintln!("step {step}: validation loss {loss:.4}"))
        }
        TrainEvent::Checkpoint { .. } => {}
        TrainEvent::Finished { steps, cancelled } => {
            bar.finish();
            eprintln!(
                "{} after {steps} steps",
                if *cancelled { "cancelled" } else { "done" }
            );
        }
    };
    let run = RunOptions {
        checkpoint_dir: Some(out.to_path_buf()),
        resume,
        cancel: Some(interrupt_flag()),
    };
    let result = fine_tune(engine.model(), &dataset, pad, &cfg, &run, &mut listener)?;
    if result.cancelled {
        return Err(lamina::Error::Cancelled(format!(
            "stopped after step {}; the checkpoint in {} is complete: add --resume to continue",
            result.steps,
            out.join("checkpoint").display()
        )));
    }
    let base = engine.model_name().to_string();
    result
        .weights
        .save(out, cfg.lora.dropout, Some(base.as_str()))?;
    eprintln!(
        "adapter written to {} (apply with --adapter {})",
        out.display(),
        out.display()
    );
    Ok(())
}

fn grad(model: &ModelArgs, batch: &Path, out: &Path) -> lamina::Result<()> {
    use lamina::adapter::{peft_name, LoraWeights};
    use lamina::train::{TrainableAdapter, Trainer, TrainerOptions};
    let file_err = |p: &Path, d: String| lamina::Error::File {
        path: p.to_path_buf(),
        detail: d,
    };
    let Some(dir) = model.adapter.first() else {
        return Err(lamina::Error::Invalid(
            "grad needs --adapter DIR (the starting LoRA weights)".into(),
        ));
    };
    let weights = LoraWeights::load(Path::new(dir))?;
    let bytes = std::fs::read(batch).map_err(|e| file_err(batch, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(batch, e.to_string()))?;
    let tensor = |name: &str| -> lamina::Result<(Vec<i64>, Vec<usize>)> {
        let t = st
            .tensor(name)
            .or_else(|_| st.tensor(&format!("batch.{name}")))
            .map_err(|_| file_err(batch, format!("no tensor '{name}'")))?;
        let v: Vec<i64> = match t.dtype() {
            safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec(t.data()),
            safetensors::Dtype::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(t.data())
                .into_iter()
                .map(i64::from)
                .collect(),
            d => {
                return Err(file_err(
                    batch,
                    format!("'{name}' has dtype {d:?}, expected i64"),
                ))
            }
        };
        Ok((v, t.shape().to_vec()))
    };
    let (ids, shape) = tensor("input_ids")?;
    let (labels, lshape) = tensor("labels")?;
    let (mask, mshape) = tensor("attention_mask")?;
    if shape.len() != 2 || lshape != shape || mshape != shape {
        return Err(file_err(
            batch,
            format!("input_ids {shape:?}, labels {lshape:?} and attention_mask {mshape:?} must all be [B, T]"),
        ));
    }
    let (rows, t) = (shape[0], shape[1]);
    for r in 0..rows {
        let m = &mask[r * t..][..t];
        let n = m.iter().take_while(|&&v| v == 1).count();
        if m[n..].iter().any(|&v| v != 0) {
            return Err(file_err(
                batch,
                format!("row {r}: attention_mask is not right padding"),
            ));
        }
        if labels[r * t + n..(r + 1) * t].iter().any(|&l| l != -100) {
            return Err(file_err(batch, format!("row {r}: a label on padding")));
        }
    }
    let engine = model.load_base()?;
    let ids: Vec<u32> = ids
        .iter()
        .map(|&v| u32::try_from(v).map_err(|_| file_err(batch, format!("token id {v}"))))
        .collect::<lamina::Result<_>>()?;
    let adapter =
        TrainableAdapter::from_weights(&engine.model().gpu, &engine.model().cfg, &weights)?;
    let opts = TrainerOptions {
        max_batch: rows as u32,
        max_seq: t as u32,
        recompute: false,
    };
    let mut trainer = Trainer::new(engine.model(), adapter, opts)?;
    trainer.zero_grad();
    let res = trainer.accumulate(&ids, &labels, rows)?;
    let loss = (res.sum / res.tokens.max(1) as f64) as f32;
    let grads = trainer.gradients()?;
    let loss_v = [loss];
    let mut named: Vec<(String, Vec<usize>, &[f32])> = vec![("loss".into(), vec![], &loss_v[..])];
    let r = weights.config.r as usize;
    for (&(layer, m), (da, db)) in &grads {
        named.push((
            format!("{}.grad", peft_name(layer, m, false)),
            vec![r, da.len() / r],
            da,
        ));
        named.push((
            format!("{}.grad", peft_name(layer, m, true)),
            vec![db.len() / r, r],
            db,
        ));
    }
    let bytes = lamina::adapter::safetensors_f32(&named)?;
    lamina::fetch::write_atomic(out, &bytes)?;
    eprintln!(
        "loss {loss:.6} over {} positions; {} gradient tensors written to {}",
        res.tokens,
        named.len() - 1,
        out.display()
    );
    Ok(())
}
