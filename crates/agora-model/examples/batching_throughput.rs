//! Continuous batching against one-request-at-a-time on a real model: generated tokens
//! per second for N greedy chat requests (about 30 prompt tokens each) all submitted at
//! once, then one after another, and the time of one decode step at several batch sizes
//! (where the time goes).
//!
//!     cargo run --release -p agora-model --example batching_throughput -- \
//!         [MODEL.gguf] [--requests 64] [--tokens 32] [--threads 2]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use agora_model::engine::set_threads;
use agora_model::generate::{GenerateOptions, RowEvent, RowId, RowRequest};
use agora_model::{BatchGenerator, Device, Engine, Message, SamplingConfig};

const TOPICS: [&str; 16] = [
    "rain", "cats", "bread", "chess", "rivers", "music", "the sea", "trains", "gardens", "winter", "coffee",
    "bees", "maps", "clocks", "bridges", "stars",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = PathBuf::from("models/SmolLM2-135M-Instruct.Q8_0.gguf");
    let (mut requests, mut tokens, mut threads) = (64usize, 32usize, 2usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--requests" => requests = value()?.parse()?,
            "--tokens" => tokens = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            _ => model = PathBuf::from(arg),
        }
    }
    set_threads(threads);
    let engine = Engine::load(&model, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = (0..requests)
        .map(|index| {
            let topic = TOPICS[index % TOPICS.len()];
            let text = format!("Write two short sentences about {topic}, request {index}.");
            engine.chat_prompt(&[Message::user(text)])
        })
        .collect::<Result<_, _>>()?;
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    println!(
        "{}: {requests} greedy chat requests, {:.1} prompt tokens on average, up to {tokens} new tokens, {threads} threads",
        model.display(),
        prompt_tokens as f64 / requests as f64
    );
    let decode = |ids: &[u32]| engine.tokenizer.decode(ids, true);
    let options = GenerateOptions {
        eos_token_ids: engine.tokenizer.eos_token_ids().to_vec(),
        decoder: Some(&decode),
        capture_attention: false,
    };
    let config = SamplingConfig::greedy(tokens);
    let request = |prompt: &Vec<u32>| RowRequest::new(prompt.clone(), config.clone());

    // All at once.
    let started = Instant::now();
    let mut generator = BatchGenerator::new(&engine.model, options.clone());
    let ids: Vec<RowId> =
        prompts.iter().map(|prompt| generator.add(request(prompt))).collect::<Result<_, _>>()?;
    let mut together = HashMap::new();
    let mut steps = 0;
    while !generator.is_idle() {
        for event in generator.step()? {
            if let RowEvent::Finished { row, generation } = event {
                together.insert(row, generation);
            }
        }
        steps += 1;
    }
    let batched_seconds = started.elapsed().as_secs_f64();
    let batched_tokens: usize = together.values().map(|generation| generation.generated_tokens).sum();

    // One after another.
    let started = Instant::now();
    let mut alone = Vec::with_capacity(requests);
    for prompt in &prompts {
        let mut generator = BatchGenerator::new(&engine.model, options.clone());
        generator.add(request(prompt))?;
        while !generator.is_idle() {
            for event in generator.step()? {
                if let RowEvent::Finished { generation, .. } = event {
                    alone.push(generation);
                }
            }
        }
    }
    let sequential_seconds = started.elapsed().as_secs_f64();
    let sequential_tokens: usize = alone.iter().map(|generation| generation.generated_tokens).sum();
    let same =
        ids.iter().zip(&alone).filter(|(id, generation)| together[id].tokens == generation.tokens).count();

    let batched_rate = batched_tokens as f64 / batched_seconds;
    let sequential_rate = sequential_tokens as f64 / sequential_seconds;
    println!(
        "all at once:      {batched_tokens} tokens in {batched_seconds:.2} s ({steps} steps) = {batched_rate:.1} tok/s"
    );
    println!(
        "one after another: {sequential_tokens} tokens in {sequential_seconds:.2} s = {sequential_rate:.1} tok/s"
    );
    println!("ratio: {:.2}x; identical replies: {same}/{requests}", batched_rate / sequential_rate);

    // Where the time goes: one decode step at several batch sizes (after a prefill).
    println!("decode step time by batch size (prompt ~{} tokens):", prompts[0].len());
    for batch in [1usize, 4, 16, 64] {
        let batch = batch.min(requests);
        let mut generator = BatchGenerator::new(&engine.model, options.clone());
        for prompt in prompts.iter().take(batch) {
            generator.add(RowRequest::new(prompt.clone(), SamplingConfig::greedy(8)))?;
        }
        let started = Instant::now();
        generator.step()?;
        let prefill = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let decode_steps = 4;
        for _ in 0..decode_steps {
            generator.step()?;
        }
        let step = started.elapsed().as_secs_f64() / decode_steps as f64;
        println!(
            "  batch {batch:>2}: prefill {prefill:.3} s, decode step {:.1} ms = {:.1} ms per row, {:.1} tok/s",
            step * 1e3,
            step * 1e3 / batch as f64,
            batch as f64 / step
        );
    }
    Ok(())
}
