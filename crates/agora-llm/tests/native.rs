//! The native backend on a tiny random f32 Llama from agora-model's test_data (given a
//! character-level tokenizer written here), and on the downloaded default model when
//! models/ has it: concurrent requests get the replies they get one by one, a dropped
//! request does not disturb the others, streamed chunks add up to the reply, log-probs,
//! bad requests, and the worker's batching statistics.

use std::path::{Path, PathBuf};

use agora_core::Message;
use agora_llm::{
    Backend, FinishReason, LlmError, NativeBackend, NativeOptions, Prompt, Reply, Request, Sampling,
};
use agora_model::{Device, Engine};
use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::mpsc::unbounded_channel;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// The tiny Llama (vocabulary 128, context 128) in a temporary folder with a tokenizer:
/// three ChatML special tokens, newline and printable ASCII one token per character,
/// and filler tokens up to 128.
fn tiny_model_folder() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agora-model/test_data/models/llama");
    let folder = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), folder.path().join(file)).unwrap();
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocabulary: Vec<String> = specials.iter().map(|token| token.to_string()).collect();
    vocabulary.push("\n".to_string());
    vocabulary.extend((32u8..=126).map(|byte| char::from(byte).to_string()));
    while vocabulary.len() < 128 {
        vocabulary.push(format!("<x{}>", vocabulary.len()));
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        vocabulary.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect();
    let added_tokens: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(folder.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = json!({"eos_token": "<|im_end|>", "bos_token": null});
    std::fs::write(folder.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    folder
}

fn tiny_backend(folder: &Path, max_batch: usize) -> NativeBackend {
    let engine = Engine::load(folder, &Device::Cpu).unwrap();
    NativeBackend::new(engine, NativeOptions { max_batch }).unwrap()
}

fn default_model() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q8_0.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: {} is absent (run the README's set-up to fetch it)", path.display());
        None
    }
}

fn chats(count: usize) -> Vec<Request> {
    let topics = ["the weather", "cats", "a good book", "rivers", "bread", "chess", "music", "the sea"];
    (0..count)
        .map(|index| {
            let text = format!("Tell me about {} please.", topics[index % topics.len()]);
            let sampling = Sampling { max_tokens: 12 + index % 5, ..Sampling::greedy(0) };
            Request::chat(vec![Message::user(text)], sampling)
        })
        .collect()
}

fn one_by_one(backend: &dyn Backend, requests: &[Request]) -> Vec<Reply> {
    requests.iter().map(|request| block_on(backend.generate(request.clone(), None)).unwrap()).collect()
}

fn all_at_once(backend: &dyn Backend, requests: &[Request]) -> Vec<Reply> {
    let futures: Vec<_> = requests.iter().map(|request| backend.generate(request.clone(), None)).collect();
    block_on(join_all(futures)).into_iter().map(Result::unwrap).collect()
}

#[test]
fn concurrent_requests_get_the_replies_they_get_one_by_one() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let requests = chats(8);
    let sequential = one_by_one(&backend, &requests);
    assert_eq!(backend.stats().largest_batch, 1);
    let concurrent = all_at_once(&backend, &requests);
    assert_eq!(concurrent, sequential);
    let stats = backend.stats();
    assert!(stats.largest_batch > 1, "{stats:?}");
    assert_eq!(stats.requests, 16);
    let generated: usize = sequential.iter().map(|reply| reply.usage.completion_tokens).sum();
    assert_eq!(stats.generated_tokens, 2 * generated as u64);
    assert!(sequential.iter().all(|reply| reply.usage.prompt_tokens > 20));
}

#[test]
fn max_batch_bounds_the_rows_of_a_step() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 3);
    let requests = chats(8);
    let sequential = one_by_one(&backend, &requests);
    assert_eq!(all_at_once(&backend, &requests), sequential);
    assert!(backend.stats().largest_batch <= 3, "{:?}", backend.stats());
}

#[test]
fn a_dropped_request_does_not_disturb_the_others() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let long = |text: &str| Request::text(text, Sampling { max_tokens: 80, ..Sampling::greedy(0) });
    let requests = [long("Once upon a time"), long("The river"), long("In the morning")];
    let expected = one_by_one(&backend, &requests);

    let first = backend.generate(requests[0].clone(), None);
    let (sink, mut chunks) = unbounded_channel();
    let dropped = backend.generate(requests[1].clone(), Some(sink));
    let third = backend.generate(requests[2].clone(), None);
    // The worker runs whether or not the futures are polled: wait for a piece of the
    // second reply, then abandon it.
    assert!(block_on(chunks.recv()).is_some());
    drop(dropped);
    let replies = block_on(futures_util::future::join(first, third));
    assert_eq!(replies.0.unwrap(), expected[0]);
    assert_eq!(replies.1.unwrap(), expected[2]);
    // The abandoned row stopped early: it did not generate all its tokens.
    let stats = backend.stats();
    let everything: usize = expected.iter().map(|reply| reply.usage.completion_tokens).sum();
    assert!(stats.generated_tokens < 2 * everything as u64, "{stats:?}");

    // A stream whose receiver is gone cancels its request.
    let (sink, chunks) = unbounded_channel();
    drop(chunks);
    let error = block_on(backend.generate(requests[1].clone(), Some(sink))).unwrap_err();
    assert!(matches!(error, LlmError::Cancelled), "{error}");
    // And the backend goes on serving.
    assert_eq!(block_on(backend.generate(requests[0].clone(), None)).unwrap(), expected[0]);
}

/// Streams `request`; checks that the chunks add up to the reply and carry its log-probs.
fn streamed(backend: &dyn Backend, request: Request) -> Reply {
    let (sink, mut chunks) = unbounded_channel();
    let reply = block_on(backend.generate(request, Some(sink))).unwrap();
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Ok(chunk) = chunks.try_recv() {
        text.push_str(&chunk.text);
        logprobs.extend(chunk.logprobs);
    }
    assert_eq!(text, reply.text);
    if let Some(expected) = &reply.logprobs {
        assert_eq!(&logprobs, expected);
    }
    reply
}

#[test]
fn streamed_chunks_add_up_to_the_reply_also_with_stop_strings() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let request = Request::text("Once upon a time", Sampling { max_tokens: 40, ..Sampling::greedy(0) });
    let full = streamed(&backend, request.clone());
    assert_eq!(full, block_on(backend.generate(request.clone(), None)).unwrap());
    let characters: Vec<char> = full.text.chars().collect();
    assert!(characters.len() >= 12, "{full:?}");
    // A stop string from the middle of the reply: the text ends before it.
    let stop: String = characters[8..11].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let sampling = Sampling { stop: vec![stop.clone()], ..request.sampling.clone() };
    let stopped = streamed(&backend, Request { sampling, ..request.clone() });
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    // Sampled and with log-probs, streaming still adds up.
    let sampling = Sampling { temperature: 0.9, seed: Some(3), max_tokens: 30, ..Sampling::default() };
    streamed(&backend, Request { sampling, ..request }.with_logprobs(3));
}

#[test]
fn logprobs_come_with_token_strings_and_alternatives() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let request = Request::text("Once upon a time", Sampling { max_tokens: 10, ..Sampling::greedy(0) });
    let reply = block_on(backend.generate(request.clone().with_logprobs(4), None)).unwrap();
    let logprobs = reply.logprobs.as_ref().unwrap();
    assert_eq!(logprobs.len(), reply.usage.completion_tokens);
    let tokens: String = logprobs.iter().map(|entry| entry.token.as_str()).collect();
    assert_eq!(tokens, reply.text);
    for entry in logprobs {
        assert!(entry.logprob <= 0.0);
        assert_eq!(entry.top.len(), 4);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(
            (entry.top[0].token.as_str(), entry.top[0].logprob),
            (entry.token.as_str(), entry.logprob)
        );
        assert!(entry.top.windows(2).all(|pair| pair[0].logprob >= pair[1].logprob));
    }
    // Without the question, none; the text is the same either way.
    let plain = block_on(backend.generate(request, None)).unwrap();
    assert_eq!((plain.logprobs.as_ref(), plain.text.as_str()), (None, reply.text.as_str()));
}

#[test]
fn bad_requests_are_refused_and_the_backend_goes_on() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let refused = |request: Request, reason: &str| {
        let error = block_on(backend.generate(request, None)).unwrap_err();
        assert!(matches!(&error, LlmError::InvalidRequest(message) if message.contains(reason)), "{error}");
    };
    refused(Request::text("x".repeat(200), Sampling::greedy(4)), "context");
    refused(Request::text("hello", Sampling { temperature: -1.0, ..Sampling::greedy(4) }), "temperature");
    refused(Request::text("hello", Sampling { top_p: 0.0, ..Sampling::greedy(4) }), "top_p");
    refused(Request::text("hello", Sampling::greedy(4)).with_logprobs(50), "top_logprobs");
    refused(Request::text("", Sampling::greedy(4)), "empty");
    let reply = block_on(backend.generate(Request::text("hello", Sampling::greedy(4)), None)).unwrap();
    assert_eq!(
        reply.usage,
        agora_llm::Usage { prompt_tokens: 5, completion_tokens: reply.usage.completion_tokens }
    );
    let none = block_on(backend.generate(Request::text("hello", Sampling::greedy(0)), None)).unwrap();
    assert_eq!(
        (none.text.as_str(), none.finish_reason, none.usage.completion_tokens),
        ("", FinishReason::Length, 0)
    );
}

#[test]
fn the_backend_names_its_model_and_prompts_use_the_chat_template() {
    let folder = tiny_model_folder();
    let backend = tiny_backend(folder.path(), 64);
    let info = backend.info();
    let name = folder.path().file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(info.kind, "native");
    assert_eq!(info.spec, format!("native:{}", folder.path().display()));
    assert_eq!(info.model, name);
    let chat = Request::chat(vec![Message::user("hi")], Sampling::greedy(1));
    let reply = block_on(backend.generate(chat, None)).unwrap();
    assert_eq!(reply.model, name);
    // "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", one token per character
    // or special token.
    assert_eq!(reply.usage.prompt_tokens, 1 + 5 + 2 + 1 + 1 + 1 + 10);
    assert!(matches!(Request::text("x", Sampling::default()).prompt, Prompt::Text(_)));
    drop(backend); // joins the worker thread
}

#[test]
fn the_default_model_batches_concurrent_chats_without_changing_them() {
    let Some(path) = default_model() else { return };
    let engine = Engine::load(&path, &Device::Cpu).unwrap();
    let backend = NativeBackend::new(engine, NativeOptions::default()).unwrap();
    assert_eq!(backend.info().model, "SmolLM2-135M-Instruct.Q8_0.gguf");
    // Few and short: the model runs unoptimised code in test builds.
    let requests: Vec<Request> = chats(4)
        .into_iter()
        .map(|request| Request { sampling: Sampling::greedy(8), ..request }.with_logprobs(2))
        .collect();
    let sequential = one_by_one(&backend, &requests);
    let concurrent = all_at_once(&backend, &requests);
    // Batching pads rows, which changes the summation order of the attention products;
    // on a quantized model that can flip a near-tie. So the replies must agree token for
    // token up to a point where the model itself hesitated between its two best tokens.
    for (index, (alone, batched)) in sequential.iter().zip(&concurrent).enumerate() {
        assert!(!alone.text.is_empty());
        let (alone_tokens, batched_tokens) =
            (alone.logprobs.as_ref().unwrap(), batched.logprobs.as_ref().unwrap());
        if let Some(first_difference) =
            alone_tokens.iter().zip(batched_tokens).position(|(one, other)| one.token != other.token)
        {
            let hesitation = &alone_tokens[first_difference];
            let gap = hesitation.top[0].logprob - hesitation.top[1].logprob;
            assert!(
                gap < 0.25 && hesitation.top[1].token == batched_tokens[first_difference].token,
                "request {index}: batched reply left the greedy path at token {first_difference} where the \
                 top two were {gap} apart: {:?} vs {:?}",
                alone.text,
                batched.text
            );
        } else {
            assert_eq!(alone.text, batched.text, "request {index}");
        }
    }
    assert!(backend.stats().largest_batch > 1, "{:?}", backend.stats());

    // Streaming with log-probs, and a dropped request beside a kept one.
    let request = requests[0].clone();
    let reply = streamed(&backend, request.clone());
    assert_eq!(reply.text, sequential[0].text);
    let logprobs = reply.logprobs.unwrap();
    assert!(logprobs.iter().all(|entry| entry.logprob <= 0.0 && entry.top.len() == 2));
    let kept = backend.generate(requests[1].clone(), None);
    drop(backend.generate(requests[2].clone(), None));
    assert_eq!(block_on(kept).unwrap(), sequential[1]);
}
