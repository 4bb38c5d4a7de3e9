//! Chat with a GGUF model on the GPU.
//!
//!     cargo run --release --example chat -- --prompt "What is the capital of France?"
//!     cargo run --release --example chat                      # interactive
//!     cargo run --release --example chat -- --model path/to/model.gguf --temperature 0
//!
//! Ends with load time, prefill and decode speed, and peak GPU memory.

use clap::Parser;
use lamina::engine::{chat_repl, stream_to_stdout, Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams};
use lamina::tokenizer::ChatMessage;

#[derive(Parser)]
struct Args {
    /// One user message; without it the example is interactive.
    #[arg(long)]
    prompt: Option<String>,
    /// GGUF file (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    system: Option<String>,
}

fn main() -> std::process::ExitCode {
    lamina::gpu::two_software_threads_per_core();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> lamina::Result<()> {
    let mut engine = Engine::load(args.model.as_deref(), EngineOptions::default())?;
    eprintln!(
        "model {} on {}",
        engine.path().display(),
        engine.gpu().describe()
    );
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..Default::default()
        },
        ..Default::default()
    };
    let Some(prompt) = args.prompt else {
        return chat_repl(
            &mut engine,
            args.system,
            &params,
            &mut std::io::stdin().lock(),
        );
    };
    let mut messages = Vec::new();
    if let Some(s) = args.system {
        messages.push(ChatMessage::new("system", s));
    }
    messages.push(ChatMessage::new("user", prompt));
    let g = engine.chat(&messages, &params, &mut stream_to_stdout())?;
    println!();
    eprintln!("{}", engine.report(&g));
    Ok(())
}
