//! Helpers shared by the end-to-end test binaries: run the `agora` binary on a workspace,
//! require success (stdout, or JSON), or require a one-line error.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub fn command(workspace: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agora"));
    command.args(args).arg("--workspace").arg(workspace).env_remove("AGORA_WORKSPACE");
    command
}

pub fn agora(workspace: &Path, args: &[&str]) -> Output {
    command(workspace, args).output().expect("the agora binary runs")
}

pub fn ok(workspace: &Path, args: &[&str]) -> String {
    let output = agora(workspace, args);
    assert!(output.status.success(), "agora {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

pub fn json(workspace: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(workspace, &args)).expect("--json prints JSON")
}

pub fn fails(workspace: &Path, args: &[&str]) -> String {
    let output = agora(workspace, args);
    assert!(!output.status.success(), "agora {args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut lines = stderr.lines().filter(|line| !line.starts_with("hint:"));
    let first = lines.next().unwrap_or_default().to_string();
    assert!(first.starts_with("error: "), "{stderr}");
    assert_eq!(lines.next(), None, "the error takes one line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    first
}
