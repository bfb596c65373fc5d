//! What a backend is asked and what it answers, shaped after the OpenAI API so that the
//! HTTP client and the server map onto it field by field.

use agora_core::Message;
use serde::{Deserialize, Serialize};

/// The input: a conversation for the model's chat template, or raw text to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

/// Sampling parameters. The first five are the OpenAI API's and every backend honours
/// them; the `Option`al extras are sent to servers that know them (vLLM, llama.cpp) and
/// used by the native backend, and left out when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    /// Generation stops before the first of these strings; the string is not returned.
    pub stop: Vec<String>,
    /// Makes sampling reproducible (exactly so on the native backend; best effort on
    /// servers).
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 256,
            stop: Vec::new(),
            seed: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
        }
    }
}

impl Sampling {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Sampling {
        Sampling { temperature: 0.0, max_tokens, ..Sampling::default() }
    }
}

/// One request to a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub prompt: Prompt,
    #[serde(default)]
    pub sampling: Sampling,
    /// When set, return each generated token's log-probability and this many of the most
    /// likely alternatives (0 = the chosen token only). Log-probs are those of the
    /// model's distribution before sampling processors (as vLLM and OpenAI report them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

impl Request {
    pub fn chat(messages: Vec<Message>, sampling: Sampling) -> Request {
        Request { prompt: Prompt::Chat(messages), sampling, logprobs: None }
    }

    pub fn text(text: impl Into<String>, sampling: Sampling) -> Request {
        Request { prompt: Prompt::Text(text.into()), sampling, logprobs: None }
    }

    pub fn with_logprobs(mut self, top: usize) -> Request {
        self.logprobs = Some(top);
        self
    }
}

/// Why generation ended, with the OpenAI API's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence, or a stop string or stop token.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    /// The request was cancelled before it finished.
    Cancelled,
    /// Anything else a server reports (`content_filter`, `tool_calls`, ...), kept as sent.
    #[serde(untagged)]
    Other(String),
}

impl FinishReason {
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Other(other) => other,
        }
    }

    /// Reads a server's `finish_reason`.
    pub fn parse(text: &str) -> FinishReason {
        match text {
            "stop" | "eos" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "cancelled" | "abort" => FinishReason::Cancelled,
            other => FinishReason::Other(other.to_string()),
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// One generated token with its log-probability and, when asked, the most likely
/// alternatives at that position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

/// A backend's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Present when the request asked for log-probs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The model that answered, as the backend names it.
    pub model: String,
}

/// A piece of a reply as it streams: new text, and the log-probs of the tokens that made
/// it when they were asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}
