//! The `agora` binary: a thin `main` that runs a command and prints the error chain.
//!
//! Flow: declare (`args.rs`, clap) -> resolve (`settings.rs`: flags + environment into
//! plain settings) -> run (`commands/<name>.rs`). Data goes to stdout, progress and
//! logs to stderr.

mod allocator;
mod args;
mod commands;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A closed pipe (`agora show x | head`) is not a failure.
            if error
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&error));
            if let Some(hint) = output::hint_for(&error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line: "outer: inner: root cause", without repeating a cause
/// that an outer message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
