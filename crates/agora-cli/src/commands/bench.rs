//! `agora bench cmv`: throughput of the CMV path on a generated Tan-format jsonlist
//! (default 200 MB): parse + tree rebuild + delta detection on one core, then the full
//! import into a fresh store; peak resident memory of each phase.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use agora_corpus::input::Lines;
use agora_corpus::{Format, ImportOptions, ImportReport, Location, cmv};
use agora_store::Store;
use anyhow::Context;
use serde::Serialize;

use crate::args::{BenchArgs, BenchTarget};
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
fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size in MB since the last reset (Linux `VmHWM`).
fn peak_rss() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kilobytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes / 1024.0)
}
