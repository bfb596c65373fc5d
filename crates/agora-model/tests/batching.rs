//! Continuous batching on the tiny random f32 models of test_data: a row that joins a
//! running batch, or shares it with rows that are cancelled, gets exactly the tokens it
//! gets alone (greedy and seeded sampling), and the log-probs reported while generating
//! are those scoring.rs computes for the same continuation.

use std::collections::HashMap;
use std::path::Path;

use agora_model::generate::{FinishReason, GenerateOptions, Generation, RowEvent, RowId, RowRequest};
use agora_model::scoring::token_logprobs;
use agora_model::weights::Model;
use agora_model::{BatchGenerator, Device, SamplingConfig};

const MODELS: [&str; 3] = ["llama", "qwen2", "gpt2"];

fn load(name: &str) -> Model {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name);
    Model::load(&folder, &Device::Cpu).unwrap()
}

/// Prompts of different lengths, token ids within every test model's vocabulary (128).
fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 17, 99, 3, 42], vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], vec![77, 12, 64]]
}

fn configs() -> Vec<SamplingConfig> {
    vec![
        SamplingConfig::greedy(12),
        SamplingConfig {
            temperature: 1.0,
            top_k: 40,
            seed: 7,
            max_new_tokens: 12,
            ..SamplingConfig::default()
        },
    ]
}

/// A prompt run alone in its own generator.
fn alone(model: &Model, request: RowRequest) -> Generation {
    let mut generator = BatchGenerator::new(model, GenerateOptions::default());
    let id = generator.add(request).unwrap();
    run_to_end(&mut generator).remove(&id).unwrap()
}

/// Every prompt run alone, row `index` with its own seed (see [`request`]).
fn each_alone(model: &Model, prompts: &[Vec<u32>], config: &SamplingConfig) -> Vec<Generation> {
    prompts.iter().enumerate().map(|(index, prompt)| alone(model, request(prompt, config, index))).collect()
}

/// Steps until every row has finished; returns the generations by row.
fn run_to_end(generator: &mut BatchGenerator<'_>) -> HashMap<RowId, Generation> {
    let mut finished = HashMap::new();
    while !generator.is_idle() {
        finished.extend(finished_rows(generator.step().unwrap()));
    }
    finished
}

fn finished_rows(events: Vec<RowEvent>) -> Vec<(RowId, Generation)> {
    events
        .into_iter()
        .filter_map(|event| match event {
            RowEvent::Finished { row, generation } => Some((row, generation)),
            RowEvent::Token { .. } => None,
        })
        .collect()
}

/// Each prompt gets its own seed, so rows differ even when sampling.
fn request(prompt: &[u32], config: &SamplingConfig, index: usize) -> RowRequest {
    let config = SamplingConfig { seed: config.seed + index as u64, ..config.clone() };
    RowRequest::new(prompt.to_vec(), config)
}

#[test]
fn rows_that_join_mid_flight_get_the_tokens_they_get_alone() {
    for name in MODELS {
        let model = load(name);
        for config in configs() {
            let prompts = prompts();
            let expected = each_alone(&model, &prompts, &config);
            assert!(expected.iter().all(|generation| generation.tokens.len() == 12));

            // Row 0 starts alone, row 1 joins after 3 steps (its prompt is longer than
            // row 0's cache), row 2 after 7 (its prompt is shorter).
            let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
            let mut ids = vec![generator.add(request(&prompts[0], &config, 0)).unwrap()];
            let mut finished = HashMap::new();
            for step in 0..40 {
                if step == 3 {
                    ids.push(generator.add(request(&prompts[1], &config, 1)).unwrap());
                }
                if step == 7 {
                    ids.push(generator.add(request(&prompts[2], &config, 2)).unwrap());
                }
                finished.extend(finished_rows(generator.step().unwrap()));
            }
            assert!(generator.is_idle());
            for (index, id) in ids.iter().enumerate() {
                let generation = &finished[id];
                assert_eq!(generation.tokens, expected[index].tokens, "{name}, {config:?}, row {index}");
                assert_eq!(generation.finish_reason, FinishReason::Length);
                assert_eq!(generation.prompt_tokens, prompts[index].len());
            }
        }
    }
}

#[test]
fn rows_that_share_a_prefix_get_the_tokens_they_get_alone() {
    let common: Vec<u32> = vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11];
    let prompts: Vec<Vec<u32>> = [vec![40, 41, 42], vec![50], vec![60, 61, 62, 63, 64], vec![70, 71]]
        .into_iter()
        .map(|tail| [common.clone(), tail].concat())
        .collect();
    for name in MODELS {
        let model = load(name);
        for config in configs() {
            let expected = each_alone(&model, &prompts, &config);
            // Rows 0-2 join together and share the 11-token prefix (their padding lies
            // between the prefix and the rest); row 3 joins them after 2 steps; row 2,
            // the widest, is cancelled after 5, so the gapped rows are cut and shifted.
            let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
            let mut ids: Vec<RowId> = (0..3)
                .map(|index| generator.add(request(&prompts[index], &config, index)).unwrap())
                .collect();
            let mut finished = HashMap::new();
            for step in 0..40 {
                if step == 2 {
                    ids.push(generator.add(request(&prompts[3], &config, 3)).unwrap());
                }
                if step == 5 {
                    let cancelled = generator.cancel(ids[2]).unwrap().unwrap();
                    assert_eq!(cancelled.tokens, expected[2].tokens[..5], "{name}, {config:?}");
                }
                finished.extend(finished_rows(generator.step().unwrap()));
            }
            assert!(generator.is_idle());
            assert_eq!(generator.prefix_tokens_reused(), 2 * common.len(), "{name}: the prefix was shared");
            for index in [0, 1, 3] {
                assert_eq!(
                    finished[&ids[index]].tokens, expected[index].tokens,
                    "{name}, {config:?}, row {index}"
                );
            }
        }
    }
}

#[test]
fn cancelling_a_row_leaves_the_others_unchanged() {
    for name in MODELS {
        let model = load(name);
        for config in configs() {
            let prompts = prompts();
            let expected = each_alone(&model, &prompts, &config);
            let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
            let ids: Vec<RowId> = prompts
                .iter()
                .enumerate()
                .map(|(index, prompt)| generator.add(request(prompt, &config, index)).unwrap())
                .collect();
            let mut finished = HashMap::new();
            for _ in 0..4 {
                finished.extend(finished_rows(generator.step().unwrap()));
            }
            // Row 1 (the longest prompt, which sets the cache's width) goes.
            let cancelled = generator.cancel(ids[1]).unwrap().unwrap();
            assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
            assert_eq!(cancelled.tokens, expected[1].tokens[..4]);
            assert!(generator.cancel(ids[1]).unwrap().is_none(), "a row is cancelled once");
            assert_eq!(generator.active_rows(), 2);
            finished.extend(run_to_end(&mut generator));
            assert!(!finished.contains_key(&ids[1]));
            for index in [0, 2] {
                assert_eq!(
                    finished[&ids[index]].tokens, expected[index].tokens,
                    "{name}, {config:?}, row {index}"
                );
            }
        }
    }
}

#[test]
fn a_row_cancelled_before_its_prefill_never_runs() {
    let model = load("llama");
    let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
    let id = generator.add(RowRequest::new(vec![1, 2, 3], SamplingConfig::greedy(4))).unwrap();
    let cancelled = generator.cancel(id).unwrap().unwrap();
    assert_eq!((cancelled.tokens.len(), cancelled.finish_reason), (0, FinishReason::Cancelled));
    assert!(generator.is_idle());
    assert!(generator.step().unwrap().is_empty());
}

#[test]
fn every_row_keeps_its_own_sampling_configuration() {
    let model = load("llama");
    let prompts = prompts();
    let configs = [
        SamplingConfig::greedy(3),
        SamplingConfig { temperature: 0.8, seed: 3, max_new_tokens: 9, ..SamplingConfig::default() },
        SamplingConfig { repetition_penalty: 1.3, ..SamplingConfig::greedy(0) },
    ];
    let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
    let ids: Vec<RowId> = prompts
        .iter()
        .zip(&configs)
        .map(|(prompt, config)| generator.add(RowRequest::new(prompt.clone(), config.clone())).unwrap())
        .collect();
    let finished = run_to_end(&mut generator);
    let lengths: Vec<usize> = ids.iter().map(|id| finished[id].tokens.len()).collect();
    assert_eq!(lengths, vec![3, 9, 0]);
    for ((prompt, config), id) in prompts.iter().zip(&configs).zip(&ids) {
        let single = alone(&model, RowRequest::new(prompt.clone(), config.clone()));
        assert_eq!(finished[id].tokens, single.tokens);
    }
}

#[test]
fn logprobs_match_scoring_of_the_same_continuation() {
    for name in MODELS {
        let model = load(name);
        for config in configs() {
            let prompts = prompts();
            let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
            let mut ids = Vec::new();
            let mut finished = HashMap::new();
            let mut streamed: HashMap<RowId, Vec<f32>> = HashMap::new();
            // The last row joins late, so its log-probs come from a padded batch.
            for (index, prompt) in prompts.iter().enumerate() {
                ids.push(generator.add(request(prompt, &config, index).with_logprobs(5)).unwrap());
                for event in generator.step().unwrap() {
                    match event {
                        RowEvent::Token { row, token, logprobs } => {
                            let logprobs = logprobs.unwrap();
                            assert_eq!(logprobs.token, token);
                            streamed.entry(row).or_default().push(logprobs.logprob);
                        }
                        RowEvent::Finished { row, generation } => {
                            finished.insert(row, generation);
                        }
                    }
                }
            }
            finished.extend(run_to_end(&mut generator));
            for (index, id) in ids.iter().enumerate() {
                let generation = &finished[id];
                let reported = generation.logprobs.as_ref().unwrap();
                assert_eq!(reported.len(), generation.tokens.len());
                let scored = token_logprobs(
                    &model,
                    &[prompts[index].clone()],
                    std::slice::from_ref(&generation.tokens),
                )
                .unwrap();
                for (position, (reported, scored)) in reported.iter().zip(&scored[0]).enumerate() {
                    assert!(
                        (reported.logprob - scored).abs() < 1e-4,
                        "{name}, row {index}, token {position}: {} against {scored}",
                        reported.logprob
                    );
                    assert_eq!(reported.top.len(), 5);
                    assert!(reported.top.windows(2).all(|pair| pair[0].1 >= pair[1].1));
                    assert!(reported.top[0].1 >= reported.logprob);
                    if config.temperature == 0.0 {
                        // Greedy picks the most likely token.
                        assert_eq!(reported.top[0].0, reported.token);
                    }
                }
                // Those streamed with the tokens are the same numbers.
                let streamed_prefix = &streamed.get(id).map(Vec::as_slice).unwrap_or_default();
                for (streamed, reported) in streamed_prefix.iter().zip(reported) {
                    assert_eq!(*streamed, reported.logprob);
                }
            }
        }
    }
}

#[test]
fn rows_that_do_not_ask_get_no_logprobs() {
    let model = load("llama");
    let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
    let plain = generator.add(RowRequest::new(vec![4, 5], SamplingConfig::greedy(2))).unwrap();
    let asking =
        generator.add(RowRequest::new(vec![4, 5], SamplingConfig::greedy(2)).with_logprobs(0)).unwrap();
    let events = generator.step().unwrap();
    for event in &events {
        if let RowEvent::Token { row, logprobs, .. } = event {
            assert_eq!(logprobs.is_some(), *row == asking);
            if let Some(logprobs) = logprobs {
                assert!(logprobs.top.is_empty());
            }
        }
    }
    let finished = run_to_end(&mut generator);
    assert!(finished[&plain].logprobs.is_none());
    assert_eq!(finished[&asking].logprobs.as_ref().unwrap().len(), 2);
}

#[test]
fn bad_rows_are_refused_when_added() {
    let model = load("llama");
    let mut generator = BatchGenerator::new(&model, GenerateOptions::default());
    assert!(generator.add(RowRequest::new(vec![], SamplingConfig::greedy(2))).is_err());
    assert!(generator.add(RowRequest::new(vec![500], SamplingConfig::greedy(2))).is_err());
    assert!(generator.add(RowRequest::new(vec![1; 129], SamplingConfig::greedy(2))).is_err());
    let no_decoder = SamplingConfig { stop_strings: vec!["x".to_string()], ..SamplingConfig::greedy(2) };
    assert!(generator.add(RowRequest::new(vec![1], no_decoder)).is_err());
    let bad_temperature = SamplingConfig { temperature: -1.0, ..SamplingConfig::greedy(2) };
    assert!(generator.add(RowRequest::new(vec![1], bad_temperature)).is_err());
    assert!(generator.is_idle());
}
