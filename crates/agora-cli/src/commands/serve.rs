//! `agora serve`: an OpenAI-compatible API for a backend (agora-web does the HTTP). This
//! file resolves the flags and the token's environment variable into a `ServeConfig`,
//! opens the backend, and runs the server until Ctrl-C or SIGTERM (graceful: requests in
//! flight finish; a second Ctrl-C exits at once).

use std::net::SocketAddr;

use agora_web::ServeConfig;
use anyhow::Context;

use crate::args::ServeArgs;
use crate::settings::Settings;

pub fn run(_settings: &Settings, args: &ServeArgs) -> anyhow::Result<()> {
    let config = resolve_config(args, |name| std::env::var(name).ok())?;
    if config.token.is_some() {
        eprintln!("agora serve: clients must send the bearer token from ${}", args.token_env);
    } else if !config.bind.ip().is_loopback() {
        eprintln!(
            "warning: listening on {} without a token: anyone who can reach this machine can use \
             the model; set ${} to require one",
            config.bind.ip(),
            args.token_env
        );
    }
    let backend = super::backend::open_backend(&args.backend, &args.model)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        agora_web::serve(backend, &config, shutdown_signal()).await?;
        eprintln!("agora serve: stopped");
        Ok(())
    })
}

/// The settings step of this command: flags plus the token's environment variable.
/// `read_env` is the environment (a parameter so tests need not set real variables).
fn resolve_config(
    args: &ServeArgs,
    read_env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<ServeConfig> {
    anyhow::ensure!(args.max_tokens_limit > 0, "--max-tokens-limit must be at least 1");
    anyhow::ensure!(args.max_concurrent_requests > 0, "--max-concurrent-requests must be at least 1");
    anyhow::ensure!(!args.token_env.is_empty(), "--token-env names no variable");
    let token =
        read_env(&args.token_env).map(|token| token.trim().to_string()).filter(|token| !token.is_empty());
    Ok(ServeConfig {
        bind: SocketAddr::new(args.host, args.port),
        token,
        max_body_bytes: args.max_body_bytes,
        max_tokens_limit: args.max_tokens_limit,
        max_concurrent_requests: args.max_concurrent_requests,
    })
}

/// Completes on the first Ctrl-C or SIGTERM; a second Ctrl-C ends the process without
/// waiting for requests in flight.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: never shut down through this arm.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("agora serve: shutting down after the requests in flight (Ctrl-C again to stop now)");
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("agora serve: stopped without waiting");
            std::process::exit(130);
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["agora", "serve"].iter().chain(flags)).unwrap();
        match cli.command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_are_loopback_port_8000_and_no_token() {
        let config = resolve_config(&serve_args(&[]), |_| None).unwrap();
        assert_eq!(config, ServeConfig::default());
        assert_eq!(serve_args(&[]).backend.to_string(), "native");
    }

    #[test]
    fn the_token_comes_from_the_named_variable() {
        let args = serve_args(&["--token-env", "MY_TOKEN", "--host", "0.0.0.0", "--port", "0"]);
        let env = |name: &str| (name == "MY_TOKEN").then(|| " abc \n".to_string());
        let config = resolve_config(&args, env).unwrap();
        assert_eq!(config.token.as_deref(), Some("abc"));
        assert_eq!(config.bind, SocketAddr::from(([0, 0, 0, 0], 0)));
        let empty = resolve_config(&args, |_| Some(String::new())).unwrap();
        assert_eq!(empty.token, None);
    }

    #[test]
    fn limits_are_checked() {
        let error = resolve_config(&serve_args(&["--max-tokens-limit", "0"]), |_| None).unwrap_err();
        assert!(error.to_string().contains("--max-tokens-limit"));
    }
}
