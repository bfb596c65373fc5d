//! Sampling: each logits processor against values computed by hand and by transformers'
//! logits processors (transformers 5.23, the expected rows below), greedy = argmax,
//! seeded draws reproducible.

use agora_model::sampling::{
    SplitMix64, Xoshiro256StarStar, apply_repetition_penalty, apply_temperature, argmax, ban_repeated_ngrams,
    draw, keep_min_p, keep_top_k, keep_top_p, softmax,
};
use agora_model::{Device, Sampler, SamplingConfig, Tensor};

const NEG: f32 = f32::NEG_INFINITY;
const LOGITS: [f32; 6] = [1.0, -2.0, 0.5, 3.0, -0.5, 2.0];

/// Runs `process` on a copy of `logits` and compares with `expected` (-inf exactly,
/// finite values within 1e-6).
fn check(logits: &[f32], process: impl FnOnce(&mut [f32]), expected: &[f32]) {
    let mut scores = logits.to_vec();
    process(&mut scores);
    assert_eq!(scores.len(), expected.len());
    for (index, (got, want)) in scores.iter().zip(expected).enumerate() {
        if want.is_infinite() {
            assert_eq!(got, want, "index {index}: got {scores:?}, want {expected:?}");
        } else {
            assert!((got - want).abs() < 1e-6, "index {index}: got {scores:?}, want {expected:?}");
        }
    }
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once_per_token() {
    // transformers: RepetitionPenaltyLogitsProcessor(1.5), input_ids [0, 1, 3, 0].
    check(
        &LOGITS,
        |s| apply_repetition_penalty(s, &[0, 1, 3, 0], 1.5),
        &[1.0 / 1.5, -3.0, 0.5, 2.0, -0.5, 2.0],
    );
    check(&LOGITS, |s| apply_repetition_penalty(s, &[0, 1, 3], 1.0), &LOGITS);
    // Out-of-vocabulary history tokens are ignored rather than panicking.
    check(&LOGITS, |s| apply_repetition_penalty(s, &[99], 2.0), &LOGITS);
}

#[test]
fn no_repeat_ngram_bans_tokens_that_complete_a_seen_ngram() {
    let history = [1, 2, 3, 1, 2, 4, 1, 2];
    // transformers: NoRepeatNGramLogitsProcessor(3) and (2) both ban 3 and 4 here.
    check(&LOGITS, |s| ban_repeated_ngrams(s, &history, 3), &[1.0, -2.0, 0.5, NEG, NEG, 2.0]);
    check(&LOGITS, |s| ban_repeated_ngrams(s, &history, 2), &[1.0, -2.0, 0.5, NEG, NEG, 2.0]);
    // Size 1 bans every token already seen.
    check(&LOGITS, |s| ban_repeated_ngrams(s, &[0, 5], 1), &[NEG, -2.0, 0.5, 3.0, -0.5, NEG]);
    // Too short a history for a 4-gram: nothing banned.
    check(&LOGITS, |s| ban_repeated_ngrams(s, &[1, 2], 4), &LOGITS);
    check(&LOGITS, |s| ban_repeated_ngrams(s, &history, 0), &LOGITS);
}

#[test]
fn temperature_divides_logits() {
    check(&[2.0, -1.0], |s| apply_temperature(s, 0.5), &[4.0, -2.0]);
    check(&[2.0, -1.0], |s| apply_temperature(s, 2.0), &[1.0, -0.5]);
}

#[test]
fn top_k_keeps_the_k_largest_and_their_ties() {
    check(&LOGITS, |s| keep_top_k(s, 2), &[NEG, NEG, NEG, 3.0, NEG, 2.0]);
    // transformers keeps every token tied with the k-th largest.
    check(&[1.0, 2.0, 2.0, 0.0], |s| keep_top_k(s, 1), &[NEG, 2.0, 2.0, NEG]);
    check(&[1.0, 2.0, 2.0, 0.0], |s| keep_top_k(s, 2), &[NEG, 2.0, 2.0, NEG]);
    check(&LOGITS, |s| keep_top_k(s, 6), &LOGITS);
    check(&LOGITS, |s| keep_top_k(s, 100), &LOGITS);
}

#[test]
fn top_p_matches_transformers() {
    // Probabilities of LOGITS: 0.0834 0.0042 0.0506 0.6164 0.0186 0.2268.
    let cases: [(f32, [f32; 6]); 5] = [
        (0.5, [NEG, NEG, NEG, 3.0, NEG, NEG]),
        (0.8, [NEG, NEG, NEG, 3.0, NEG, 2.0]),
        (0.9, [1.0, NEG, NEG, 3.0, NEG, 2.0]),
        (0.95, [1.0, NEG, 0.5, 3.0, NEG, 2.0]),
        (0.01, [NEG, NEG, NEG, 3.0, NEG, NEG]),
    ];
    for (top_p, expected) in cases {
        check(&LOGITS, |s| keep_top_p(s, top_p), &expected);
    }
}

#[test]
fn min_p_matches_transformers() {
    let cases: [(f32, [f32; 6]); 3] = [
        (0.1, [1.0, NEG, NEG, 3.0, NEG, 2.0]),
        (0.3, [NEG, NEG, NEG, 3.0, NEG, 2.0]),
        (0.5, [NEG, NEG, NEG, 3.0, NEG, NEG]),
    ];
    for (min_p, expected) in cases {
        check(&LOGITS, |s| keep_min_p(s, min_p), &expected);
    }
}

#[test]
fn argmax_takes_the_first_maximum_and_skips_nan() {
    assert_eq!(argmax(&LOGITS), Some(3));
    assert_eq!(argmax(&[1.0, 5.0, 5.0]), Some(1));
    assert_eq!(argmax(&[f32::NAN, -1.0]), Some(1));
    assert_eq!(argmax(&[NEG, NEG]), None);
}

#[test]
fn softmax_and_draw() {
    let probabilities = softmax(&[0.0, 0.0, NEG, 0.0]).unwrap();
    assert_eq!(probabilities, vec![1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0]);
    assert_eq!(draw(&probabilities, 0.0), 0);
    assert_eq!(draw(&probabilities, 0.5), 1);
    assert_eq!(draw(&probabilities, 0.9), 3);
    // Rounding past the total falls on the last possible token, never on a banned one.
    assert_eq!(draw(&[0.5, 0.5, 0.0], 1.0), 1);
    assert_eq!(softmax(&[NEG, f32::NAN]), None);
}

#[test]
fn random_generators_match_their_reference_outputs() {
    // SplitMix64 seeded with 1234567: the reference outputs from Vigna's splitmix64.c.
    let mut splitmix = SplitMix64::new(1234567);
    let outputs: Vec<u64> = (0..3).map(|_| splitmix.next_u64()).collect();
    assert_eq!(outputs, vec![6457827717110365317, 3203168211198807973, 9817491932198370423]);
    // Same seed, same stream; rows differ; row 0 is the plain stream.
    let first: Vec<u64> = {
        let mut rng = Xoshiro256StarStar::new(42);
        (0..4).map(|_| rng.next_u64()).collect()
    };
    let again: Vec<u64> = {
        let mut rng = Xoshiro256StarStar::for_row(42, 0);
        (0..4).map(|_| rng.next_u64()).collect()
    };
    let row_one: Vec<u64> = {
        let mut rng = Xoshiro256StarStar::for_row(42, 1);
        (0..4).map(|_| rng.next_u64()).collect()
    };
    assert_eq!(first, again);
    assert_ne!(first, row_one);
    let mut rng = Xoshiro256StarStar::new(7);
    for _ in 0..1000 {
        let uniform = rng.next_f64();
        assert!((0.0..1.0).contains(&uniform));
    }
}

#[test]
fn xoshiro_stream_is_pinned() {
    // Pinned so that a seed gives the same tokens forever: changing the generator
    // changes every seeded experiment, and must be a deliberate decision.
    let mut rng = Xoshiro256StarStar::new(0);
    let outputs: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
    assert_eq!(outputs, PINNED_XOSHIRO_SEED_0);
}

// Computed independently with a Python transcription of the reference C code.
const PINNED_XOSHIRO_SEED_0: [u64; 3] = [11091344671253066420, 13793997310169335082, 1900383378846508768];

#[test]
fn greedy_sampler_is_argmax_after_the_penalties() {
    let mut sampler = Sampler::new(&SamplingConfig::default(), 0).unwrap();
    assert_eq!(sampler.sample(&LOGITS, &[]).unwrap(), 3);
    // Penalised 3 (3.0 / 4 = 0.75) loses to 5 (2.0).
    let config = SamplingConfig { repetition_penalty: 4.0, ..SamplingConfig::default() };
    let mut sampler = Sampler::new(&config, 0).unwrap();
    assert_eq!(sampler.sample(&LOGITS, &[3]).unwrap(), 5);
    let tensor = Tensor::new(&LOGITS, &Device::Cpu).unwrap();
    let mut sampler = Sampler::new(&SamplingConfig::default(), 0).unwrap();
    assert_eq!(sampler.sample_tensor(&tensor, &[]).unwrap(), 3);
}

#[test]
fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
    let config = SamplingConfig { temperature: 1.0, seed: 11, ..SamplingConfig::default() };
    let run = |row: usize| {
        let mut sampler = Sampler::new(&config, row).unwrap();
        (0..200).map(|_| sampler.sample(&LOGITS, &[]).unwrap()).collect::<Vec<u32>>()
    };
    let first = run(0);
    assert_eq!(first, run(0));
    assert_ne!(first, run(1));
    // Token 3 has probability 0.616: about 123 of 200 draws.
    let threes = first.iter().filter(|&&t| t == 3).count();
    assert!((95..=150).contains(&threes), "{threes} draws of token 3");
    // Top-k 1 makes sampling greedy.
    let config = SamplingConfig { temperature: 5.0, top_k: 1, seed: 3, ..SamplingConfig::default() };
    let mut sampler = Sampler::new(&config, 0).unwrap();
    assert!((0..50).all(|_| sampler.sample(&LOGITS, &[]).unwrap() == 3));
}

#[test]
fn invalid_configurations_and_impossible_rows_are_errors() {
    for config in [
        SamplingConfig { temperature: -1.0, ..SamplingConfig::default() },
        SamplingConfig { top_p: 0.0, ..SamplingConfig::default() },
        SamplingConfig { min_p: 2.0, ..SamplingConfig::default() },
        SamplingConfig { repetition_penalty: 0.0, ..SamplingConfig::default() },
        SamplingConfig { stop_strings: vec![String::new()], ..SamplingConfig::default() },
    ] {
        assert!(Sampler::new(&config, 0).is_err(), "{config:?}");
    }
    let mut sampler = Sampler::new(&SamplingConfig::default(), 0).unwrap();
    assert!(sampler.sample(&[], &[]).is_err());
    assert!(sampler.sample(&[NEG, f32::NAN], &[]).is_err());
}

#[test]
fn config_round_trips_through_json_with_defaults() {
    let config: SamplingConfig = serde_json::from_str(r#"{"temperature": 0.7, "top_p": 0.9}"#).unwrap();
    assert_eq!(config.temperature, 0.7);
    assert_eq!(config.top_p, 0.9);
    assert_eq!(config.max_new_tokens, 256);
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<SamplingConfig>(&json).unwrap(), config);
    assert!(serde_json::from_str::<SamplingConfig>(r#"{"temprature": 0.7}"#).is_err());
}
