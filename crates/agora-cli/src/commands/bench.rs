//! `agora bench cmv|decode|forward-gpt2`: throughput and peak memory of agora's hot paths.
//!
//! - `cmv`: the CMV path on a generated Tan-format jsonlist (default 200 MB): parse + tree
//!   rebuild + delta detection on one core, then the full import into a fresh store.
//! - `decode`: prefill and greedy decode tokens/s of a GGUF model, and peak resident
//!   memory after loading against the file size (issue 3's speed and memory targets).
//! - `forward-gpt2`: f32 forward tokens/s of a random-initialised GPT-2 6 x 384.
//!
//! scripts/bench/compare.py runs the last two beside llama.cpp and PyTorch.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_corpus::input::Lines;
use agora_corpus::{Format, ImportOptions, ImportReport, Location, cmv};
use agora_model::engine::{Engine, on_pool, set_threads};
use agora_model::gpt2::Gpt2;
use agora_model::{Device, LanguageModel, Tensor, Trainable};
use agora_store::Store;
use anyhow::Context;
use serde::Serialize;

use crate::args::{BenchArgs, BenchTarget, ModelArgs};
use crate::settings::Settings;

#[derive(Debug, Serialize)]
struct Phase {
    name: &'static str,
    megabytes: f64,
    seconds: f64,
    megabytes_per_second: f64,
    /// Peak resident set size during the phase, in MB (`VmHWM`, reset before the phase).
    peak_rss_megabytes: Option<f64>,
}

pub fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    match args.target {
        BenchTarget::Cmv => bench_cmv(settings, args),
        BenchTarget::Decode => bench_decode(settings, args),
        BenchTarget::ForwardGpt2 => bench_forward_gpt2(settings, args),
        BenchTarget::Train => super::bench_train::run(settings, args),
        BenchTarget::Serve => super::bench_serve::run(settings, args),
        BenchTarget::Simulate => super::bench_simulate::run(settings, args),
    }
}

fn bench_cmv(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    if let Some(path) = &args.write_input {
        let written = generate(path, args)?;
        println!("{}: {:.1} MB of synthetic CMV (seed {})", path.display(), written as f64 / 1e6, args.seed);
        return Ok(());
    }
    let input = match &args.input {
        Some(path) => path.clone(),
        None => {
            let path = scratch.path().join("cmv_synthetic.jsonlist");
            generate(&path, args)?;
            path
        }
    };

    let parse = measure("parse + tree + deltas (1 core)", || parse_only(&input))?;
    let store_path = scratch.path().join("bench.sqlite");
    let import = measure("full import into the store", || {
        let store = Store::open(&store_path)?;
        let options = ImportOptions::default();
        let (report, _) = super::import::import_corpus(&store, Format::Cmv, &input, "cmv", &options)?;
        Ok(report.bytes)
    })?;
    let phases = [parse, import];
    if settings.json {
        return crate::output::print_json(&phases);
    }
    println!("input: {}", input.display());
    for phase in &phases {
        let peak = phase.peak_rss_megabytes.map_or("n/a".to_string(), |mb| format!("{mb:.0} MB"));
        println!(
            "{:<34} {:>8.1} MB in {:>6.2} s = {:>7.1} MB/s, peak RSS {peak}",
            phase.name, phase.megabytes, phase.seconds, phase.megabytes_per_second
        );
    }
    Ok(())
}

/// Writes a synthetic Tan-format jsonlist of `--size-mb` to `path`; returns its size.
fn generate(path: &Path, args: &BenchArgs) -> anyhow::Result<u64> {
    let started = Instant::now();
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let written = cmv::write_synthetic(&mut writer, args.size_mb * 1_000_000, args.seed)
        .and_then(|written| writer.flush().map(|()| written))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "generated {:.1} MB of synthetic CMV in {:.1} s",
        written as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(written)
}

fn parse_only(input: &Path) -> anyhow::Result<u64> {
    let mut lines = Lines::open(input)?;
    let path = lines.path().to_path_buf();
    let mut report = ImportReport::default();
    let mut turns = 0u64;
    let mut bytes = 0u64;
    while let Some((number, line)) = lines.next_line()? {
        bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let location = Location::line(&path, number);
        let conversation = cmv::parse_submission(line, &location, &mut report)?;
        turns += conversation.turns.len() as u64;
    }
    anyhow::ensure!(turns > 0, "{}: no turns parsed", input.display());
    Ok(bytes)
}

fn measure(name: &'static str, work: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<Phase> {
    reset_peak_rss();
    let started = Instant::now();
    let bytes = work()?;
    let seconds = started.elapsed().as_secs_f64();
    let megabytes = bytes as f64 / 1e6;
    Ok(Phase {
        name,
        megabytes,
        seconds,
        megabytes_per_second: megabytes / seconds,
        peak_rss_megabytes: peak_rss(),
    })
}

/// Resets the kernel's peak-RSS counter for this process (Linux; a no-op elsewhere).
pub(super) fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size in MB since the last reset (Linux `VmHWM`).
pub(super) fn peak_rss() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes / 1024.0)
}

/// The prompt of `agora bench decode` (and of scripts/bench/compare.py, which reads the
/// token ids from our JSON): tokenized raw, without special tokens, repeated if needed
/// and cut to `--prompt-tokens`.
const PROMPT_TEXT: &str = "The old lighthouse keeper climbed the spiral stairs every evening \
    at dusk, carrying a lantern and a notebook in which he recorded the weather, the ships \
    that passed, and the birds that rested on the railing. Over forty years the notebook grew \
    into a shelf of volumes, and the village school asked him to explain what he had learned \
    about the sea, the wind and the patience that both of them demand from anyone who lives \
    beside them.";

#[derive(Debug, Serialize)]
struct DecodeReport {
    model: PathBuf,
    file_bytes: u64,
    threads: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    repeats: usize,
    /// The exact prompt, so that other engines can be fed the same tokens.
    prompt_token_ids: Vec<u32>,
    /// Tokens never chosen: the model's end-of-sequence ids, so every run generates
    /// exactly `new_tokens`.
    banned_token_ids: Vec<u32>,
    /// Greedy continuation of the first run (end-of-sequence banned).
    generated_token_ids: Vec<u32>,
    load_seconds: f64,
    /// `VmRSS` just before loading (the program itself), in bytes.
    rss_before_load_bytes: Option<u64>,
    /// `VmHWM` after loading (reset just before), in bytes.
    peak_rss_after_load_bytes: Option<u64>,
    /// `peak_rss_after_load_bytes / file_bytes` (issue 3's target: under 1.3).
    peak_rss_to_file_ratio: Option<f64>,
    /// `VmHWM` at the end of the benchmark (load + every run), in bytes.
    peak_rss_end_bytes: Option<u64>,
    /// One forward over the prompt, logits of the last position only
    /// (`LanguageModel::forward_last`, as llama.cpp with `logits_all=False`).
    prefill_tokens_per_second: f64,
    /// `new_tokens` single-token forwards with greedy choice.
    decode_tokens_per_second: f64,
    prefill_seconds: Vec<f64>,
    decode_seconds: Vec<f64>,
}

fn bench_decode(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.prompt_tokens > 0 && args.new_tokens > 0,
        "--prompt-tokens and --new-tokens must be > 0"
    );
    anyhow::ensure!(args.repeats > 0, "--repeats must be > 0");
    let threads = threads_or_all(args.threads);
    // Before any model work: candle's kernels read rayon's global pool.
    set_threads(threads);
    let model_args =
        ModelArgs { model: args.model.clone(), models_dir: None, threads: None, api_key_env: None };
    let path = super::model::model_path(&model_args)?;
    let file_bytes =
        std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.len();

    let rss_before_load_bytes = status_kilobytes("VmRSS:").map(|kilobytes| kilobytes * 1024);
    reset_peak_rss();
    let started = Instant::now();
    let engine = Engine::load(&path, &Device::Cpu).with_context(|| format!("load {}", path.display()))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let peak_rss_after_load_bytes = peak_rss_bytes();

    let prompt = prompt_tokens(&engine, args.prompt_tokens)?;
    let banned = engine.tokenizer.eos_token_ids().to_vec();
    let model = &engine.model;
    anyhow::ensure!(
        args.prompt_tokens + args.new_tokens <= model.max_context(),
        "{} + {} tokens exceed the model's context of {}",
        args.prompt_tokens,
        args.new_tokens,
        model.max_context()
    );

    let mut prefill_seconds = Vec::with_capacity(args.repeats);
    let mut decode_seconds = Vec::with_capacity(args.repeats);
    let mut generated_token_ids = Vec::new();
    // One untimed warm-up run (page faults of the mapped weights, allocator, thread pool).
    // Each run on the compute pool, as generation runs (`agora_model::engine::on_pool`).
    let timed_run = || -> anyhow::Result<(f64, f64, Vec<u32>)> {
        let mut cache = model.new_cache();
        let started = Instant::now();
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward_last(&input, None, &mut cache)?;
        let mut next = greedy_last(&logits, &banned)?;
        let prefill = started.elapsed().as_secs_f64();

        let mut generated = Vec::with_capacity(args.new_tokens);
        let started = Instant::now();
        for _ in 0..args.new_tokens {
            generated.push(next);
            let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
            let logits = model.forward_last(&input, None, &mut cache)?;
            next = greedy_last(&logits, &banned)?;
        }
        Ok((prefill, started.elapsed().as_secs_f64(), generated))
    };
    for run in 0..=args.repeats {
        let (prefill, decode, generated) = on_pool(timed_run)?;
        if run == 0 {
            continue;
        }
        eprintln!(
            "run {run}: prefill {:.1} tok/s, decode {:.1} tok/s",
            prompt.len() as f64 / prefill,
            args.new_tokens as f64 / decode
        );
        prefill_seconds.push(prefill);
        decode_seconds.push(decode);
        if generated_token_ids.is_empty() {
            generated_token_ids = generated;
        }
    }
    let peak_rss_end_bytes = peak_rss_bytes();
    let report = DecodeReport {
        model: path,
        file_bytes,
        threads,
        prompt_tokens: prompt.len(),
        new_tokens: args.new_tokens,
        repeats: args.repeats,
        generated_token_ids,
        banned_token_ids: banned,
        load_seconds,
        rss_before_load_bytes,
        peak_rss_after_load_bytes,
        peak_rss_to_file_ratio: peak_rss_after_load_bytes.map(|bytes| bytes as f64 / file_bytes as f64),
        peak_rss_end_bytes,
        prefill_tokens_per_second: prompt.len() as f64 / median(&prefill_seconds),
        decode_tokens_per_second: args.new_tokens as f64 / median(&decode_seconds),
        prefill_seconds,
        decode_seconds,
        prompt_token_ids: prompt,
    };
    if settings.json {
        return crate::output::print_json(&report);
    }
    println!("model: {} ({:.1} MB)", report.model.display(), file_bytes as f64 / 1e6);
    println!(
        "threads {}, prompt {} tokens, {} new tokens, median of {} runs",
        report.threads, report.prompt_tokens, report.new_tokens, report.repeats
    );
    println!("prefill: {:.1} tok/s", report.prefill_tokens_per_second);
    println!("decode:  {:.1} tok/s", report.decode_tokens_per_second);
    let megabytes =
        |bytes: Option<u64>| bytes.map_or("n/a".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
    println!(
        "peak RSS after loading: {} ({} x the file), at the end: {}",
        megabytes(report.peak_rss_after_load_bytes),
        report.peak_rss_to_file_ratio.map_or("n/a".to_string(), |ratio| format!("{ratio:.2}")),
        megabytes(report.peak_rss_end_bytes)
    );
    Ok(())
}

/// Exactly `count` token ids of [`PROMPT_TEXT`] (repeated when one copy is too short).
fn prompt_tokens(engine: &Engine, count: usize) -> anyhow::Result<Vec<u32>> {
    let one_copy = engine.tokenizer.encode(PROMPT_TEXT, false)?;
    anyhow::ensure!(!one_copy.is_empty(), "the tokenizer returned no tokens for the benchmark prompt");
    let copies = count.div_ceil(one_copy.len());
    let text = vec![PROMPT_TEXT; copies].join(" ");
    let mut ids = engine.tokenizer.encode(&text, false)?;
    ids.truncate(count);
    anyhow::ensure!(ids.len() == count, "could not build a prompt of {count} tokens");
    Ok(ids)
}

/// The most likely next token by the last-position `logits` (`[1, vocab]`), never one of
/// `banned`.
fn greedy_last(logits: &Tensor, banned: &[u32]) -> anyhow::Result<u32> {
    let scores = logits.flatten_all()?.to_vec1::<f32>()?;
    let mut best: Option<(u32, f32)> = None;
    for (id, &score) in (0u32..).zip(scores.iter()) {
        if banned.contains(&id) || score.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, top)| score > top) {
            best = Some((id, score));
        }
    }
    best.map(|(id, _)| id).context("the model returned no usable logits")
}

#[derive(Debug, Serialize)]
struct ForwardReport {
    threads: usize,
    batch: usize,
    sequence: usize,
    layers: usize,
    width: usize,
    heads: usize,
    vocab_size: usize,
    parameters: usize,
    repeats: usize,
    /// `batch * sequence / median(seconds)`.
    tokens_per_second: f64,
    seconds: Vec<f64>,
}

/// GPT-2 "small-ish": NOTES.md's PyTorch reference configuration.
const GPT2_LAYERS: usize = 6;
const GPT2_WIDTH: usize = 384;
const GPT2_HEADS: usize = 6;
const GPT2_VOCAB: usize = 50_257;
const GPT2_POSITIONS: usize = 1024;

fn bench_forward_gpt2(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.repeats > 0 && args.batch > 0 && args.sequence > 0,
        "--repeats, --batch and --sequence must be > 0"
    );
    anyhow::ensure!(args.sequence <= GPT2_POSITIONS, "--sequence is at most {GPT2_POSITIONS}");
    let threads = threads_or_all(args.threads);
    set_threads(threads);
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let parameters = write_random_gpt2(scratch.path(), args.seed)?;
    let model = Gpt2::from_hf_dir(scratch.path(), &Device::Cpu, Trainable::No)?;

    let mut random = agora_model::sampling::SplitMix64::new(args.seed);
    let tokens: Vec<u32> =
        (0..args.batch * args.sequence).map(|_| (random.next_u64() % GPT2_VOCAB as u64) as u32).collect();
    let input = Tensor::from_vec(tokens, (args.batch, args.sequence), &Device::Cpu)?;
    let mut seconds = Vec::with_capacity(args.repeats);
    for run in 0..=args.repeats {
        let elapsed = on_pool(|| -> anyhow::Result<f64> {
            let mut cache = model.new_cache();
            let started = Instant::now();
            let logits = model.forward(&input, None, &mut cache)?;
            // Make sure the work is done (candle's CPU ops are eager; this also reads a value).
            let _ = logits.narrow(2, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(started.elapsed().as_secs_f64())
        })?;
        if run == 0 {
            continue; // warm-up
        }
        eprintln!("run {run}: {:.1} tok/s", (args.batch * args.sequence) as f64 / elapsed);
        seconds.push(elapsed);
    }
    let report = ForwardReport {
        threads,
        batch: args.batch,
        sequence: args.sequence,
        layers: GPT2_LAYERS,
        width: GPT2_WIDTH,
        heads: GPT2_HEADS,
        vocab_size: GPT2_VOCAB,
        parameters,
        repeats: args.repeats,
        tokens_per_second: (args.batch * args.sequence) as f64 / median(&seconds),
        seconds,
    };
    if settings.json {
        return crate::output::print_json(&report);
    }
    println!(
        "GPT-2 {} layers x {} wide, {} heads, vocabulary {} ({:.1}M parameters), f32",
        report.layers,
        report.width,
        report.heads,
        report.vocab_size,
        report.parameters as f64 / 1e6
    );
    println!(
        "threads {}, batch {} x {} tokens: forward {:.1} tok/s (median of {})",
        report.threads, report.batch, report.sequence, report.tokens_per_second, report.repeats
    );
    Ok(())
}

/// Writes `config.json` and a `model.safetensors` of random weights (N(0, 0.02), layer
/// norms at weight 1 and bias 0, as transformers initialises GPT-2) into `dir`; returns
/// the parameter count. The safetensors file is written by hand (an 8-byte header
/// length, a JSON header, then little-endian data) to keep candle inside agora-model.
pub(super) fn write_random_gpt2(dir: &Path, seed: u64) -> anyhow::Result<usize> {
    let config = serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": GPT2_VOCAB,
        "n_embd": GPT2_WIDTH,
        "n_layer": GPT2_LAYERS,
        "n_head": GPT2_HEADS,
        "n_positions": GPT2_POSITIONS,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("cannot write {}", dir.join("config.json").display()))?;

    #[derive(Clone, Copy)]
    enum Init {
        Normal,
        Ones,
        Zeros,
    }
    let hidden = GPT2_WIDTH;
    let mut shapes: Vec<(String, Vec<usize>, Init)> = vec![
        ("wte.weight".into(), vec![GPT2_VOCAB, hidden], Init::Normal),
        ("wpe.weight".into(), vec![GPT2_POSITIONS, hidden], Init::Normal),
    ];
    for layer in 0..GPT2_LAYERS {
        let name = |part: &str| format!("h.{layer}.{part}");
        shapes.extend([
            (name("ln_1.weight"), vec![hidden], Init::Ones),
            (name("ln_1.bias"), vec![hidden], Init::Zeros),
            (name("attn.c_attn.weight"), vec![hidden, 3 * hidden], Init::Normal),
            (name("attn.c_attn.bias"), vec![3 * hidden], Init::Zeros),
            (name("attn.c_proj.weight"), vec![hidden, hidden], Init::Normal),
            (name("attn.c_proj.bias"), vec![hidden], Init::Zeros),
            (name("ln_2.weight"), vec![hidden], Init::Ones),
            (name("ln_2.bias"), vec![hidden], Init::Zeros),
            (name("mlp.c_fc.weight"), vec![hidden, 4 * hidden], Init::Normal),
            (name("mlp.c_fc.bias"), vec![4 * hidden], Init::Zeros),
            (name("mlp.c_proj.weight"), vec![4 * hidden, hidden], Init::Normal),
            (name("mlp.c_proj.bias"), vec![hidden], Init::Zeros),
        ]);
    }
    shapes.push(("ln_f.weight".into(), vec![hidden], Init::Ones));
    shapes.push(("ln_f.bias".into(), vec![hidden], Init::Zeros));

    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for (name, shape, _) in &shapes {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header)?;
    // Pad the header with spaces so the data starts 8-byte aligned.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let path = dir.join("model.safetensors");
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    writer.write_all(&(header.len() as u64).to_le_bytes())?;
    writer.write_all(&header)?;
    let mut random = agora_model::sampling::Xoshiro256StarStar::new(seed);
    let mut parameters = 0usize;
    for (_, shape, init) in &shapes {
        let count: usize = shape.iter().product();
        parameters += count;
        for _ in 0..count {
            let value: f32 = match init {
                Init::Ones => 1.0,
                Init::Zeros => 0.0,
                Init::Normal => 0.02 * standard_normal(&mut random),
            };
            writer.write_all(&value.to_le_bytes())?;
        }
    }
    writer.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(parameters)
}

/// A standard normal draw (Box-Muller).
fn standard_normal(random: &mut agora_model::sampling::Xoshiro256StarStar) -> f32 {
    let uniform = random.next_f64().max(f64::MIN_POSITIVE);
    let angle = random.next_f64() * std::f64::consts::TAU;
    ((-2.0 * uniform.ln()).sqrt() * angle.cos()) as f32
}

pub(super) fn threads_or_all(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Peak resident set size in bytes since the last reset (Linux `VmHWM`).
fn peak_rss_bytes() -> Option<u64> {
    status_kilobytes("VmHWM:").map(|kilobytes| kilobytes * 1024)
}

/// A `kB` field of /proc/self/status (Linux).
fn status_kilobytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
