//! `agora generate`: one or several prompts (one batch), streamed when there is one.

use std::io::Write;
use std::time::Instant;

use std::sync::Arc;

use agora_llm::{Backend, BackendSpec, Prompt, Request, Sampling};
use agora_model::Message;
use agora_model::generate::Control;
use serde_json::json;

use crate::args::GenerateArgs;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &GenerateArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.backend {
        return run_on_backend(settings, args, spec);
    }
    let engine = super::model::load_engine(&args.model)?;
    let config = super::model::sampling_config(&args.sampling);
    let stream = args.prompt.len() == 1 && !settings.json;
    let mut stdout = std::io::stdout();
    let mut on_text = |_row: usize, piece: &str| {
        if stream {
            // A closed stdout ends generation instead of failing every later write.
            if stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return Control::StopAll;
            }
        }
        Control::Continue
    };
    let started = Instant::now();
    let generations = if args.raw {
        engine.complete(&args.prompt, &config, &mut on_text)?
    } else {
        let conversations: Vec<Vec<Message>> =
            args.prompt.iter().map(|prompt| conversation(args, prompt)).collect();
        engine.chat(&conversations, &config, &mut on_text)?
    };
    let seconds = started.elapsed().as_secs_f64();
    let generated: usize = generations.iter().map(|g| g.generated_tokens).sum();
    if settings.json {
        let outputs: Vec<_> = generations
            .iter()
            .zip(&args.prompt)
            .map(|(generation, prompt)| {
                json!({
                    "prompt": prompt,
                    "text": generation.text,
                    "finish_reason": generation.finish_reason,
                    "prompt_tokens": generation.prompt_tokens,
                    "generated_tokens": generation.generated_tokens,
                })
            })
            .collect();
        return crate::output::print_json(&json!({
            "model": engine.path,
            "sampling": config,
            "outputs": outputs,
            "seconds": seconds,
        }));
    }
    if stream {
        println!();
    } else {
        print_replies(
            &args.prompt,
            generations.iter().map(|generation| generation.text.as_deref().unwrap_or_default()),
        );
    }
    eprintln!("{generated} tokens in {seconds:.1} s ({:.1} tokens/s)", generated as f64 / seconds);
    Ok(())
}

/// Each prompt under a `###` heading, followed by its reply.
fn print_replies<'a>(prompts: &[String], replies: impl Iterator<Item = &'a str>) {
    for (prompt, reply) in prompts.iter().zip(replies) {
        println!("### {prompt}");
        println!("{reply}");
        println!();
    }
}

/// The messages of one prompt: the optional system message, then the prompt as the user.
fn conversation(args: &GenerateArgs, prompt: &str) -> Vec<Message> {
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::system(system.clone()));
    }
    messages.push(Message::user(prompt));
    messages
}

/// `--backend`: every prompt becomes one request, all sent at once (the native backend
/// batches them); the output names the backend and model that answered.
fn run_on_backend(settings: &Settings, args: &GenerateArgs, spec: &BackendSpec) -> anyhow::Result<()> {
    let backend: Arc<dyn Backend> = super::backend::open_backend(spec, &args.model)?;
    let flags = &args.sampling;
    let sampling = Sampling {
        temperature: flags.temperature,
        top_p: flags.top_p,
        max_tokens: flags.max_new_tokens,
        stop: flags.stop.clone(),
        seed: Some(flags.seed),
        top_k: Some(flags.top_k),
        min_p: Some(flags.min_p),
        repetition_penalty: Some(flags.repetition_penalty),
    };
    let requests: Vec<Request> = args
        .prompt
        .iter()
        .map(|prompt| {
            let prompt = if args.raw {
                Prompt::Text(prompt.clone())
            } else {
                let mut messages = Vec::new();
                if let Some(system) = &args.system {
                    messages.push(agora_core::Message::system(system.clone()));
                }
                messages.push(agora_core::Message::user(prompt.clone()));
                Prompt::Chat(messages)
            };
            Request { prompt, sampling: sampling.clone(), logprobs: None }
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let replies = runtime.block_on(async {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let backend = backend.clone();
                tokio::spawn(async move { backend.generate(request, None).await })
            })
            .collect();
        let mut replies = Vec::with_capacity(tasks.len());
        for (task, prompt) in tasks.into_iter().zip(&args.prompt) {
            let reply = task.await?.map_err(|error| anyhow::anyhow!("prompt {prompt:?}: {error}"))?;
            replies.push(reply);
        }
        anyhow::Ok(replies)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let generated: usize = replies.iter().map(|reply| reply.usage.completion_tokens).sum();
    if settings.json {
        let outputs: Vec<_> = replies
            .iter()
            .zip(&args.prompt)
            .map(|(reply, prompt)| {
                json!({
                    "prompt": prompt,
                    "text": reply.text,
                    "finish_reason": reply.finish_reason,
                    "prompt_tokens": reply.usage.prompt_tokens,
                    "generated_tokens": reply.usage.completion_tokens,
                    "model": reply.model,
                })
            })
            .collect();
        return crate::output::print_json(&json!({
            "backend": backend.info(),
            "sampling": sampling,
            "outputs": outputs,
            "seconds": seconds,
        }));
    }
    print_replies(&args.prompt, replies.iter().map(|reply| reply.text.as_str()));
    let info = backend.info();
    eprintln!(
        "{generated} tokens in {seconds:.1} s ({:.1} tokens/s) from {} ({})",
        generated as f64 / seconds,
        info.spec,
        info.model
    );
    Ok(())
}
