//! `agora show ID`: one conversation, indented by reply depth, with its labels.

use agora_core::{Conversation, ReplyTree};
use anyhow::bail;

use crate::args::ShowArgs;
use crate::settings::Settings;

pub fn run(settings: &Settings, args: &ShowArgs) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let Some(conversation) = store.conversation(&args.id)? else {
        bail!(
            "no conversation `{}` in {} (ids look like `<corpus>:<original id>`)",
            args.id,
            store.path().display()
        );
    };
    if settings.json {
        return crate::output::print_json(&conversation);
    }
    print!("{}", render(&conversation, args.limit));
    Ok(())
}

/// Plain-text rendering: a header, then one block per turn indented two spaces per depth.
pub fn render(conversation: &Conversation, limit: Option<usize>) -> String {
    let mut out = format!("# {} ({} turns)\n", conversation.id, conversation.turns.len());
    if let Some(title) = conversation.meta.get("title").and_then(|v| v.as_str()) {
        out.push_str(&format!("title: {title}\n"));
    }
    for participant in &conversation.participants {
        if let Some(persona) = &participant.persona {
            out.push_str(&format!("persona of {}: {}\n", participant.name, persona.describe()));
        }
    }
    let tree = ReplyTree::new(conversation);
    let tree_shaped = conversation.is_tree();
    for turn in conversation.turns.iter().take(limit.unwrap_or(usize::MAX)) {
        let indent = if tree_shaped { "  ".repeat(tree.depth(turn.index)) } else { String::new() };
        let mut labels = Vec::new();
        if let Some(strategy) = turn.labels.strategy {
            labels.push(format!("strategy={strategy}"));
        }
        if let Some(delta) = &turn.labels.delta {
            let confirmed = if delta.confirmed { ", confirmed" } else { "" };
            labels.push(format!("delta from {}{confirmed}", delta.giver));
        }
        if turn.labels.gives_delta {
            labels.push("gives delta".to_string());
        }
        if let Some(feedback) = &turn.labels.feedback {
            labels.push(format!("feedback={feedback}"));
        }
        let labels = if labels.is_empty() { String::new() } else { format!(" [{}]", labels.join("; ")) };
        out.push_str(&format!(
            "{indent}[{}] {} ({}){labels}\n",
            turn.index,
            turn.speaker,
            turn.role.as_str()
        ));
        for line in turn.text.lines() {
            out.push_str(&format!("{indent}    {line}\n"));
        }
    }
    if let Some(limit) = limit.filter(|&limit| limit < conversation.turns.len()) {
        out.push_str(&format!("... {} more turns\n", conversation.turns.len() - limit));
    }
    out
}
