//! `agora stats`: conversation, turn, role, strategy and delta counts.

use crate::args::StatsArgs;
use crate::settings::Settings;
use anyhow::bail;

pub fn run(settings: &Settings, args: &StatsArgs) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    if let Some(name) = &args.corpus
        && store.corpus_format(name)?.is_none()
    {
        bail!("no corpus `{name}` in {} (see `agora corpora`)", store.path().display());
    }
    let stats = store.stats(args.corpus.as_deref())?;
    if settings.json {
        return crate::output::print_json(&stats);
    }
    println!("conversations: {}", stats.conversations);
    println!(
        "turns: {} (mean {:.1} per conversation, max {})",
        stats.turns, stats.mean_turns, stats.max_turns
    );
    println!("mean turn length: {:.0} characters", stats.mean_turn_chars);
    println!("speakers: {}", stats.speakers);
    for (role, count) in &stats.roles {
        println!("role {role}: {count}");
    }
    for (strategy, count) in &stats.strategies {
        println!("strategy {strategy}: {count}");
    }
    if stats.deltas > 0 || stats.delta_comments > 0 {
        println!(
            "deltas: {} awarded ({} by the original poster, {} confirmed by DeltaBot), {} comments giving one",
            stats.deltas, stats.deltas_by_op, stats.deltas_confirmed, stats.delta_comments
        );
    }
    Ok(())
}
