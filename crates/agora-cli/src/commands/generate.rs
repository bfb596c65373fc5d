//! `agora generate`: one or several prompts (one batch), streamed when there is one.

use std::io::Write;
use std::time::Instant;

use agora_model::Message;
use agora_model::generate::Control;
use serde_json::json;

use crate::args::GenerateArgs;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &GenerateArgs) -> anyhow::Result<()> {
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
        let conversations: Vec<Vec<Message>> = args
            .prompt
            .iter()
            .map(|prompt| {
                let mut messages = Vec::new();
                if let Some(system) = &args.system {
                    messages.push(Message::system(system.clone()));
                }
                messages.push(Message::user(prompt.clone()));
                messages
            })
            .collect();
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
        for (generation, prompt) in generations.iter().zip(&args.prompt) {
            println!("### {prompt}");
            println!("{}", generation.text.as_deref().unwrap_or_default());
            println!();
        }
    }
    eprintln!("{generated} tokens in {seconds:.1} s ({:.1} tokens/s)", generated as f64 / seconds);
    Ok(())
}
