//! The key/value cache written in place (`Cache::append`): decoding one token at a time,
//! past the point where the reserved room must grow, gives the logits of one forward
//! over the whole sequence; a cloned cache and its original continue independently; the
//! entries of `Cache::layers` stay what a caller may read and replace.

use std::path::Path;

use agora_model::weights::Model;
use agora_model::{Cache, Device, LanguageModel, Tensor};

const LLAMA_MODELS: [&str; 3] = ["llama", "qwen2", "llama3_rope"];

fn load(name: &str) -> Model {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/models").join(name);
    Model::load(&folder, &Device::Cpu).unwrap()
}

/// Token ids within the test models' vocabulary (128), no pattern the model could copy.
fn tokens(count: usize, seed: u32) -> Vec<u32> {
    (0..count as u32).map(|index| (index * 37 + seed * 11 + 5) % 128).collect()
}

fn row(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// `[positions][vocab]` logits of one forward over `tokens` into an empty cache.
fn full_forward(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    model.forward(&row(tokens), None, &mut cache).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

/// Feeds `tokens` one at a time into `cache`; the last-position logits of each step.
fn decode(model: &Model, cache: &mut Cache, tokens: &[u32]) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .map(|&token| {
            model.forward_last(&row(&[token]), None, cache).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
        })
        .collect()
}

fn check_close(actual: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: positions");
    for (position, (actual, expected)) in actual.iter().zip(expected).enumerate() {
        let worst = actual.iter().zip(expected).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{what}: position {position} differs by {worst}");
    }
}

#[test]
fn decoding_past_the_reserved_room_matches_one_full_forward() {
    for name in LLAMA_MODELS {
        let model = load(name);
        // 100 prompt tokens, then 60 steps: the room (reserved 128 positions at a time)
        // must grow once on the way.
        let sequence = tokens(160, 1);
        let expected = full_forward(&model, &sequence);
        let mut cache = model.new_cache();
        let prefill = model.forward(&row(&sequence[..100]), None, &mut cache).unwrap();
        let prefill: Vec<Vec<f32>> = prefill.squeeze(0).unwrap().to_vec2().unwrap();
        check_close(&prefill, &expected[..100], &format!("{name} prefill"));
        let decoded = decode(&model, &mut cache, &sequence[100..]);
        check_close(&decoded, &expected[100..], &format!("{name} decode"));
        assert_eq!(cache.len, 160);
        for (keys, values) in cache.layers.iter().flatten() {
            assert_eq!(keys.dim(2).unwrap(), 160, "{name}: keys hold every position");
            assert_eq!(values.dim(2).unwrap(), 160, "{name}: values hold every position");
        }
    }
}

#[test]
fn a_cloned_cache_and_its_original_continue_independently() {
    let model = load("llama");
    let prompt = tokens(20, 2);
    let mut original = model.new_cache();
    model.forward(&row(&prompt), None, &mut original).unwrap();
    let mut copy = original.clone();
    // Different continuations, interleaved, so that a shared buffer would be overwritten.
    let (first, second) = (tokens(10, 3), tokens(10, 4));
    let mut first_logits = Vec::new();
    let mut second_logits = Vec::new();
    for (&a, &b) in first.iter().zip(&second) {
        first_logits.extend(decode(&model, &mut original, &[a]));
        second_logits.extend(decode(&model, &mut copy, &[b]));
    }
    let expected_first = full_forward(&model, &[prompt.clone(), first].concat());
    let expected_second = full_forward(&model, &[prompt, second].concat());
    check_close(&first_logits, &expected_first[20..], "original");
    check_close(&second_logits, &expected_second[20..], "clone");
}

#[test]
fn a_replaced_layer_entry_is_read_from_then_extended() {
    let model = load("llama");
    let sequence = tokens(30, 5);
    let expected = full_forward(&model, &sequence);
    let mut cache = model.new_cache();
    model.forward(&row(&sequence[..20]), None, &mut cache).unwrap();
    // What batched generation does to a cache: entries replaced by copies of themselves
    // (a row selection); the next step must read them, not the room behind the old ones.
    for (keys, values) in cache.layers.iter_mut().flatten() {
        *keys = keys.contiguous().unwrap().copy().unwrap();
        *values = values.contiguous().unwrap().copy().unwrap();
    }
    let decoded = decode(&model, &mut cache, &sequence[20..]);
    check_close(&decoded, &expected[20..], "after replacing the entries");
    cache.clear();
    let decoded = decode(&model, &mut cache, &sequence[..3]);
    check_close(&decoded, &expected[..3], "after clear");
}
