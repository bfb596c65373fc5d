//! `agora chat`: an interactive terminal chat that can hold a persona (PersonaGPT's
//! interact), with line editing and `/reset`, `/persona [FILE]`, `/quit`.

use std::io::Write;
use std::path::Path;

use agora_corpus::sdf;
use agora_model::Message;
use agora_model::engine::Engine;
use agora_model::generate::Control;
use anyhow::Context;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::args::ChatArgs;
use crate::settings::Settings;

const HELP: &str =
    "commands: /reset (forget the conversation), /persona [FILE] (show or load a persona), /quit";

pub fn run(_settings: &Settings, args: &ChatArgs) -> anyhow::Result<()> {
    let engine = super::model::load_engine(&args.model)?;
    let config = super::model::sampling_config(&args.sampling);
    let mut persona = match &args.persona {
        Some(path) => Some(persona_prompt(path)?),
        None => None,
    };
    let mut history: Vec<Message> = Vec::new();
    let mut editor = DefaultEditor::new().context("cannot open the terminal for line editing")?;
    eprintln!("chatting with {} — {HELP}", engine.path.display());
    loop {
        let line = match editor.readline("you> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(error) => return Err(error).context("reading input"),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line.split_once(' ').map_or((line, ""), |(command, rest)| (command, rest.trim())) {
            ("/quit" | "/exit", _) => break,
            ("/reset", _) => {
                history.clear();
                eprintln!("(conversation forgotten)");
                continue;
            }
            ("/persona", "") => {
                eprintln!("{}", persona.as_deref().unwrap_or("(no persona)"));
                continue;
            }
            ("/persona", path) => {
                match persona_prompt(Path::new(path)) {
                    Ok(prompt) => {
                        persona = Some(prompt);
                        history.clear();
                        eprintln!("(persona loaded; conversation forgotten)");
                    }
                    Err(error) => eprintln!("error: {error:#}"),
                }
                continue;
            }
            (command, _) if command.starts_with('/') => {
                eprintln!("unknown command {command}; {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let reply = respond(&engine, persona.as_deref(), &history, &config)?;
        history.push(Message::assistant(reply));
    }
    Ok(())
}

fn respond(
    engine: &Engine,
    persona: Option<&str>,
    history: &[Message],
    config: &agora_model::SamplingConfig,
) -> anyhow::Result<String> {
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(persona) = persona {
        messages.push(Message::system(persona));
    }
    messages.extend_from_slice(history);
    let mut stdout = std::io::stdout();
    print!("bot> ");
    let generations = engine.chat(&[messages], config, &mut |_, piece| {
        let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
        Control::Continue
    })?;
    println!();
    Ok(generations.into_iter().next().and_then(|g| g.text).unwrap_or_default().trim().to_string())
}

/// The system prompt for a persona file: an SDF persona JSON (its first persona), or
/// Persona-Chat style facts, one per line.
fn persona_prompt(path: &Path) -> anyhow::Result<String> {
    let is_json = path.extension().is_some_and(|extension| extension == "json");
    if is_json {
        let personas = sdf::read_personas(path)?;
        let persona =
            personas.first().with_context(|| format!("{}: no persona in the file", path.display()))?;
        let mut prompt = format!("You are {}. {}.", persona.name, persona.describe());
        if let Some(instructions) = &persona.instructions {
            prompt.push_str(&format!(" {instructions}"));
        }
        prompt.push_str(" Stay in character and answer as this person would, briefly.");
        return Ok(prompt);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let facts: Vec<&str> = text
        .lines()
        .map(|line| line.trim().trim_start_matches("your persona:").trim())
        .filter(|line| !line.is_empty())
        .collect();
    anyhow::ensure!(!facts.is_empty(), "{}: no persona facts (one per line)", path.display());
    Ok(format!(
        "Your persona:\n{}\nStay in character and answer as this person would, briefly.",
        facts.iter().map(|fact| format!("- {fact}")).collect::<Vec<_>>().join("\n")
    ))
}
