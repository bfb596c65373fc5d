//! Batched greedy decode throughput of the default GGUF model (issue 4 needs a batch of
//! 64 concurrent requests to beat sequential decoding by at least 2x): for each batch
//! size, one prefill of a fixed prompt in every row, then single-token steps for every
//! row at once; prints tokens per second summed over the rows.
//!
//! `cargo bench -p agora-model --bench batched_decode -- [MODEL] [BATCH,...] [STEPS]`
//! (32 steps by default; more steps mean a longer cache, and a profile of decode alone);
//! threads from `RAYON_NUM_THREADS`. Skips (with a message) when the model file is absent.

use std::path::PathBuf;
use std::time::Instant;

use agora_model::{Device, LanguageModel, Model, Tensor};

const PROMPT_TOKENS: usize = 32;
const DEFAULT_STEPS: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; everything else is ours.
    let arguments: Vec<String> =
        std::env::args().skip(1).filter(|argument| !argument.starts_with("--")).collect();
    let default_model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q8_0.gguf");
    let model_path = arguments.first().map(PathBuf::from).unwrap_or(default_model);
    let batches: Vec<usize> = match arguments.get(1) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 8, 64],
    };
    let steps: usize = match arguments.get(2) {
        Some(count) => count.parse()?,
        None => DEFAULT_STEPS,
    };
    if !model_path.is_file() {
        eprintln!(
            "skipped: {} is absent (agora model fetch; agora model convert --to q8_0)",
            model_path.display()
        );
        return Ok(());
    }
    let device = Device::Cpu;
    let model = Model::load(&model_path, &device)?;
    let prompt: Vec<u32> = (0..PROMPT_TOKENS as u32).map(|index| 1000 + index * 37).collect();
    println!(
        "{} ({} threads), prompt {PROMPT_TOKENS}, {steps} steps",
        model_path.display(),
        rayon::current_num_threads()
    );
    let mut sequential = None;
    for batch in batches {
        let rows: Vec<u32> = prompt.iter().copied().cycle().take(batch * PROMPT_TOKENS).collect();
        let input = Tensor::from_vec(rows, (batch, PROMPT_TOKENS), &device)?;
        let mut cache = model.new_cache();
        let started = Instant::now();
        let mut logits = model.forward_last(&input, None, &mut cache)?;
        let prefill = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for _ in 0..steps {
            let next = logits.argmax(1)?.to_dtype(agora_model::DType::U32)?.unsqueeze(1)?;
            logits = model.forward_last(&next, None, &mut cache)?;
        }
        let decode = (batch * steps) as f64 / started.elapsed().as_secs_f64();
        let speedup = *sequential.get_or_insert(decode);
        println!(
            "batch {batch:>3}: prefill {:>7.1} tok/s, decode {decode:>7.1} tok/s ({:.2}x batch 1)",
            (batch * PROMPT_TOKENS) as f64 / prefill,
            decode / speedup
        );
    }
    Ok(())
}
