//! Running units against a backend, several at a time, handing each finished unit to a
//! sink (the store) the moment it completes. Independent units (annotations, judgements,
//! continuations) run through [`run_units`]; discussions, whose turns depend on each
//! other, through [`run_discussions`], which runs whole discussions side by side.
//!
//! A unit whose request fails is not handed to the sink: the error stops the run after
//! the units in flight have finished and been recorded, and a resumed run retries it.

use std::cell::RefCell;

use agora_core::mix64;
use agora_llm::{Backend, Reply, Request};
use futures_util::StreamExt;
use futures_util::stream;

use crate::discussion::{Discussion, SimTurn};
use crate::{Result, SimError};

/// The sampling seed of a unit: the experiment's seed mixed with the unit's key, so each
/// unit has its own stream, the same in every run and whatever order units run in.
pub fn unit_seed(seed: u64, key: &str) -> u64 {
    let hash = key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    mix64(seed ^ hash)
}

/// One independent unit of work: its ledger key and the request to send.
#[derive(Debug, Clone)]
pub struct WorkItem<M> {
    pub key: String,
    pub request: Request,
    pub prompt_hash: String,
    /// What the stage needs to read the reply (the target, the annotator...).
    pub meta: M,
}

/// How a run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Units finished and recorded by this run.
    pub done: usize,
    /// Units found already recorded (a resumed run) and skipped.
    pub skipped: usize,
}

/// Sends every item whose key `is_done` does not know, at most `concurrency` at a time,
/// and calls `finish` with each reply as it arrives. Stops at the first failure (after
/// recording what was already in flight), returning it.
pub async fn run_units<M>(
    backend: &dyn Backend,
    items: Vec<WorkItem<M>>,
    concurrency: usize,
    is_done: impl Fn(&str) -> bool,
    mut finish: impl FnMut(&WorkItem<M>, Reply) -> Result<()>,
) -> Result<RunStats> {
    let mut stats = RunStats::default();
    let mut pending = Vec::with_capacity(items.len());
    for item in items {
        if is_done(&item.key) {
            stats.skipped += 1;
        } else {
            pending.push(item);
        }
    }
    let mut replies = stream::iter(pending)
        .map(|item| async move {
            let reply = backend.generate(item.request.clone(), None).await;
            (item, reply)
        })
        .buffer_unordered(concurrency.max(1));
    let mut first_error = None;
    while let Some((item, reply)) = replies.next().await {
        match reply {
            Ok(reply) if first_error.is_none() => {
                finish(&item, reply)?;
                stats.done += 1;
            }
            Ok(reply) => {
                // Already failing: still keep what finished, it costs nothing to store.
                finish(&item, reply)?;
                stats.done += 1;
            }
            Err(source) => {
                first_error.get_or_insert(SimError::Backend { unit: item.key.clone(), source });
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(stats),
    }
}

/// Runs discussions side by side (at most `concurrency` at once, each one turn after
/// another), calling `finish` with every new turn as soon as it is generated — the caller
/// records it before the next turn of that discussion is asked for. Returns the
/// discussions, finished.
pub async fn run_discussions(
    backend: &dyn Backend,
    discussions: Vec<Discussion>,
    concurrency: usize,
    finish: impl FnMut(&Discussion, &SimTurn) -> Result<()>,
) -> Result<Vec<Discussion>> {
    // The futures below run on one task, so a RefCell is enough to share the sink; it is
    // never borrowed across an await.
    let finish = RefCell::new(finish);
    let finish = &finish;
    let results: Vec<Result<Discussion>> = stream::iter(discussions)
        .map(|mut discussion| async move {
            while let Some(job) = discussion.next()? {
                let reply = backend
                    .generate(job.request.clone(), None)
                    .await
                    .map_err(|source| SimError::Backend { unit: job.key.clone(), source })?;
                let turn = discussion.record(&job, &reply)?;
                (finish.borrow_mut())(&discussion, &turn)?;
            }
            Ok(discussion)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}
