//! `agora bench simulate`: the cost of running discussions, apart from the model.
//!
//! 1. Orchestration: discussions on the in-process fake backend (replies in microseconds)
//!    with every turn recorded in a fresh store's job ledger as `agora simulate` does;
//!    per-turn wall time, minus the fake backend's own time per request measured on the
//!    same requests, is the overhead of planning prompts, choosing speakers and storing
//!    (issue 5's target: under 1 ms per turn).
//! 2. HTTP: `--discussions` (default 32) discussions run at once through the OpenAI-compatible
//!    client against an in-process `agora serve` whose fake model waits per token, like a
//!    model that cannot batch; the server side counts the requests in flight, so the report
//!    shows whether all discussions really ran concurrently.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agora_core::Persona;
use agora_llm::{
    Backend, BackendInfo, BoxFuture, FakeBackend, FakeMode, OpenAiBackend, OpenAiConfig, Reply, Request,
    Result as LlmResult, Sampling, StreamSink,
};
use agora_sim::discussion::{Discussion, DiscussionPlan, turn_key};
use agora_sim::policy::{ModeratorPolicy, TurnPolicy};
use agora_sim::prompt::{Agent, DiscussionLayout};
use agora_sim::runner::run_discussions;
use agora_store::Store;
use agora_web::ServeConfig;
use anyhow::Context;
use serde::Serialize;

use crate::args::BenchArgs;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
struct OrchestrationPhase {
    concurrency: usize,
    discussions: usize,
    turns: usize,
    seconds: f64,
    milliseconds_per_turn: f64,
    /// The fake backend's own time per request (measured on the same prompts).
    backend_milliseconds_per_request: f64,
    /// Per-turn time minus the backend's: prompts, speaker choice, storing.
    overhead_milliseconds_per_turn: f64,
}

#[derive(Debug, Serialize)]
struct HttpPhase {
    discussions: usize,
    turns: usize,
    seconds: f64,
    token_delay_ms: u64,
    /// The most requests the server had in flight at once.
    peak_in_flight: usize,
    /// What the same turns would take one at a time (sum of request times / concurrency
    /// of 1), estimated from the mean request time.
    sequential_estimate_seconds: f64,
}

#[derive(Debug, Serialize)]
struct SimulateReport {
    orchestration: Vec<OrchestrationPhase>,
    http: HttpPhase,
}

fn plans(count: usize, users: usize, turns: u32, max_tokens: usize) -> Vec<DiscussionPlan> {
    let agent = |name: String| Agent {
        persona: Persona { name: name.clone(), ..Persona::default() },
        name,
        instructions: "Write a short comment. Address users as @username.".into(),
        instructions_name: "bench".into(),
    };
    (0..count)
        .map(|index| DiscussionPlan {
            id: format!("d{index:04}"),
            seed: index as u64 + 1,
            topic_name: "bench".into(),
            topic: "Cities should ban cars from their centres.".into(),
            opening_speaker: "OP".into(),
            users: (0..users).map(|user| agent(format!("user{user}"))).collect(),
            moderator: Some(agent("moderator".into())),
            moderator_policy: ModeratorPolicy::EveryNUserTurns { n: 2 },
            turn_policy: TurnPolicy::RespondBack { probability: 0.4 },
            turns,
            context_window: 4,
            context: agora_sim::experiment::DEFAULT_CONTEXT.into(),
            layout: DiscussionLayout::default(),
            sampling: Sampling { max_tokens, ..Sampling::default() },
        })
        .collect()
}

pub fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut orchestration = Vec::new();
    for concurrency in [1, 8] {
        orchestration.push(runtime.block_on(measure_orchestration(concurrency))?);
    }
    let http = runtime.block_on(measure_http(args.discussions, args.fake_token_delay_ms.unwrap_or(5)))?;
    let report = SimulateReport { orchestration, http };
    if settings.json {
        return crate::output::print_json(&report);
    }
    for phase in &report.orchestration {
        println!(
            "fake backend, {} discussions at a time: {} turns in {:.2} s = {:.3} ms/turn (backend {:.3} ms/request, orchestration + store {:.3} ms/turn)",
            phase.concurrency,
            phase.turns,
            phase.seconds,
            phase.milliseconds_per_turn,
            phase.backend_milliseconds_per_request,
            phase.overhead_milliseconds_per_turn
        );
    }
    let http = &report.http;
    println!(
        "HTTP: {} discussions at once against agora serve (fake model, {} ms/token): {} turns in {:.2} s, peak {} requests in flight at the server (one at a time: about {:.1} s)",
        http.discussions,
        http.token_delay_ms,
        http.turns,
        http.seconds,
        http.peak_in_flight,
        http.sequential_estimate_seconds
    );
    Ok(())
}

async fn measure_orchestration(concurrency: usize) -> anyhow::Result<OrchestrationPhase> {
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let store = Store::open(&scratch.path().join("bench.sqlite"))?;
    let plans = plans(40, 5, 25, 40);
    store.ensure_job("bench/simulate", "simulate", &serde_json::json!({"plans": plans}))?;
    let backend = FakeBackend::new(FakeMode::Seeded);
    let discussions: Vec<Discussion> =
        plans.iter().map(|plan| Discussion::resume(plan.clone(), Vec::new())).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut turns = 0usize;
    let finished = run_discussions(&backend, discussions, concurrency, |discussion, turn| {
        let key = turn_key(&discussion.plan().id, turn.index);
        let value = serde_json::to_value(turn)
            .map_err(|error| agora_sim::SimError::Record { unit: key.clone(), message: error.to_string() })?;
        store
            .record_unit("bench/simulate", &key, &value)
            .map_err(|error| agora_sim::SimError::Record { unit: key.clone(), message: error.to_string() })?;
        turns += 1;
        Ok(())
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    // The backend alone, on the very prompts the discussions sent.
    let mut requests = Vec::new();
    for discussion in &finished {
        let mut replay = Discussion::resume(discussion.plan().clone(), Vec::new())?;
        for turn in discussion.turns() {
            let Some(job) = replay.next()? else { break };
            requests.push(job.request.clone());
            let reply = Reply {
                text: turn.raw.clone(),
                finish_reason: agora_llm::FinishReason::Stop,
                usage: turn.usage,
                logprobs: None,
                model: turn.model.clone(),
            };
            replay.record(&job, &reply)?;
        }
    }
    let backend_started = Instant::now();
    for request in &requests {
        backend.generate(request.clone(), None).await?;
    }
    let backend_per_request = backend_started.elapsed().as_secs_f64() * 1e3 / requests.len().max(1) as f64;
    let per_turn = seconds * 1e3 / turns.max(1) as f64;
    Ok(OrchestrationPhase {
        concurrency,
        discussions: finished.len(),
        turns,
        seconds,
        milliseconds_per_turn: per_turn,
        backend_milliseconds_per_request: backend_per_request,
        overhead_milliseconds_per_turn: per_turn - backend_per_request,
    })
}

/// A backend that counts the requests in flight through it.
struct Counting {
    inner: FakeBackend,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicUsize,
    busy_nanos: AtomicUsize,
}

impl Backend for Counting {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, LlmResult<Reply>> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let started = Instant::now();
            let reply = self.inner.generate(request, stream).await;
            self.busy_nanos.fetch_add(started.elapsed().as_nanos() as usize, Ordering::SeqCst);
            self.served.fetch_add(1, Ordering::SeqCst);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            reply
        })
    }
}

async fn measure_http(count: usize, token_delay_ms: u64) -> anyhow::Result<HttpPhase> {
    anyhow::ensure!(count > 0, "--discussions must be at least 1");
    let counting = Arc::new(Counting {
        inner: FakeBackend::new(FakeMode::Seeded).with_token_delay(Duration::from_millis(token_delay_ms)),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        served: AtomicUsize::new(0),
        busy_nanos: AtomicUsize::new(0),
    });
    let config = ServeConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..ServeConfig::default() };
    let server = agora_web::bind(counting.clone(), &config).await?;
    let base_url = format!("http://{}/v1", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client =
        OpenAiBackend::new(OpenAiConfig { max_concurrency: count, ..OpenAiConfig::new(base_url, "fake") })?;
    let discussions: Vec<Discussion> = plans(count, 4, 4, 12)
        .into_iter()
        .map(|plan| Discussion::resume(plan, Vec::new()))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut turns = 0usize;
    let result = run_discussions(&client, discussions, count, |_, _| {
        turns += 1;
        Ok(())
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await.context("the server task failed")??;
    result?;
    let served = counting.served.load(Ordering::SeqCst).max(1);
    let mean_request = counting.busy_nanos.load(Ordering::SeqCst) as f64 / 1e9 / served as f64;
    Ok(HttpPhase {
        discussions: count,
        turns,
        seconds,
        token_delay_ms,
        peak_in_flight: counting.peak.load(Ordering::SeqCst),
        sequential_estimate_seconds: mean_request * turns as f64,
    })
}
