//! `agora corpora`: the corpora and collections of the workspace.

use crate::settings::Settings;

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let corpora = store.corpora()?;
    let collections = store.collections()?;
    if settings.json {
        let collections: Vec<_> = collections
            .iter()
            .map(|(kind, name, count)| serde_json::json!({"kind": kind, "name": name, "count": count}))
            .collect();
        return crate::output::print_json(&serde_json::json!({
            "corpora": corpora,
            "collections": collections,
        }));
    }
    if corpora.is_empty() && collections.is_empty() {
        eprintln!("the workspace is empty: import something with `agora import <format> <path>`");
        return Ok(());
    }
    if !corpora.is_empty() {
        println!(
            "{:<24} {:<12} {:>13} {:>10} {:>8}",
            "corpus", "format", "conversations", "turns", "imports"
        );
        for corpus in &corpora {
            println!(
                "{:<24} {:<12} {:>13} {:>10} {:>8}",
                corpus.name, corpus.format, corpus.conversations, corpus.turns, corpus.imports
            );
        }
    }
    if !collections.is_empty() {
        if !corpora.is_empty() {
            println!();
        }
        println!("{:<24} {:<12} {:>13}", "collection", "kind", "items");
        for (kind, name, count) in &collections {
            println!("{name:<24} {kind:<12} {count:>13}");
        }
    }
    Ok(())
}
