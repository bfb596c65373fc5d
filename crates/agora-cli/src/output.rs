//! How the CLI talks to people: progress bars on stderr (hidden when stderr is not a
//! terminal), JSON or plain text on stdout, and `hint:` lines after errors.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A spinner counting items, for work whose total is unknown (streaming imports).
pub fn counter(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {pos} {msg} ({per_sec}, {elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// A follow-up suggestion for errors a researcher can fix with a command.
pub fn hint_for(error: &anyhow::Error) -> Option<&'static str> {
    let text = error.to_string();
    if text.contains("no workspace store here") {
        Some("create one with `agora init`, or point --workspace / AGORA_WORKSPACE at an existing one")
    } else if error.chain().any(|cause| cause.to_string().contains("--keep-going")) {
        None
    } else if text.starts_with("import ") {
        Some("add --keep-going to skip bad records (each is counted and reported)")
    } else {
        None
    }
}
