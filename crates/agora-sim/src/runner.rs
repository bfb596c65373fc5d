//! Running units against a backend, several at a time, handing each finished unit to a
//! sink (the store) the moment it completes. Independent units (annotations, judgements,
//! continuations) run through [`run_units`]; discussions, whose turns depend on each
//! other, through [`run_discussions`], which runs whole discussions side by side.
//!
//! A unit whose request fails is not handed to the sink: the error stops the run (units
//! still in flight are cancelled, unrecorded), and a resumed run retries them.

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
/// and calls `finish` with each reply as it arrives. The first failure stops the run and
/// is returned; requests still in flight are cancelled, unrecorded.
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
    while let Some((item, reply)) = replies.next().await {
        match reply {
            Ok(reply) => {
                finish(&item, reply)?;
                stats.done += 1;
            }
            // Returning drops the stream, which cancels the requests still in flight;
            // they were not recorded, so a resumed run sends them again.
            Err(source) => return Err(SimError::Backend { unit: item.key.clone(), source }),
        }
    }
    Ok(stats)
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

#[cfg(test)]
mod tests {
    use agora_llm::{FakeBackend, LlmError, Prompt, Sampling};

    use super::*;

    fn item(key: &str) -> WorkItem<()> {
        WorkItem {
            key: key.into(),
            request: Request::text(key, Sampling::default()),
            prompt_hash: String::new(),
            meta: (),
        }
    }

    fn failing_on(bad: &'static str) -> FakeBackend {
        FakeBackend::from_fn(move |request| match &request.prompt {
            Prompt::Text(text) if text == bad => Err(LlmError::Model("no".into())),
            _ => Ok("fine".into()),
        })
    }

    #[tokio::test]
    async fn recorded_units_are_skipped_and_the_rest_recorded() {
        let backend = failing_on("never");
        let items = vec![item("a"), item("b"), item("c")];
        let mut seen = Vec::new();
        let stats = run_units(
            &backend,
            items,
            2,
            |key| key == "b",
            |item, reply| {
                seen.push((item.key.clone(), reply.text));
                Ok(())
            },
        )
        .await
        .unwrap();
        seen.sort();
        assert_eq!(seen, [("a".to_string(), "fine".to_string()), ("c".to_string(), "fine".to_string())]);
        assert_eq!(stats, RunStats { done: 2, skipped: 1 });
        assert_eq!(backend.requests_served(), 2);
    }

    #[tokio::test]
    async fn a_failure_stops_the_run_and_names_the_unit() {
        let backend = failing_on("b");
        let items = vec![item("a"), item("b"), item("c"), item("d")];
        let mut seen = Vec::new();
        let error = run_units(
            &backend,
            items,
            1,
            |_| false,
            |item, _| {
                seen.push(item.key.clone());
                Ok(())
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(&error, SimError::Backend { unit, .. } if unit == "b"), "{error}");
        assert_eq!(seen, ["a"], "units after the failure are not run");
    }

    #[test]
    fn unit_seeds_differ_by_key_and_seed_and_never_change() {
        assert_eq!(unit_seed(42, "d0000/t0001"), unit_seed(42, "d0000/t0001"));
        assert_ne!(unit_seed(42, "d0000/t0001"), unit_seed(42, "d0000/t0002"));
        assert_ne!(unit_seed(42, "d0000/t0001"), unit_seed(43, "d0000/t0001"));
    }
}
