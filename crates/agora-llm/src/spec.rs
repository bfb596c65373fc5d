//! How a backend is named on the command line and in experiment files:
//!
//! - `native` — the embedded default model; `native:PATH` — a GGUF file, a Hugging Face
//!   checkpoint folder or an `org/name` in the local Hugging Face cache;
//! - `openai:URL#MODEL` — an OpenAI-compatible server (`URL` is the API base, e.g.
//!   `http://127.0.0.1:8080/v1`); the API key never appears here (it comes from a flag, the
//!   configuration or the environment);
//! - `fake:seeded` (the default fake), `fake:echo` — deterministic replies for tests.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{FakeMode, LlmError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `None` = the embedded default model.
    Native(Option<PathBuf>),
    OpenAi {
        base_url: String,
        model: String,
    },
    Fake(FakeMode),
}

impl FromStr for BackendSpec {
    type Err = LlmError;

    fn from_str(text: &str) -> Result<BackendSpec, LlmError> {
        let error = |message: &str| LlmError::Spec { spec: text.to_string(), message: message.to_string() };
        let (kind, rest) = match text.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (text, None),
        };
        match (kind, rest) {
            ("native", None) => Ok(BackendSpec::Native(None)),
            ("native", Some("")) => {
                Err(error("expected native:PATH (a GGUF file, a model folder or org/name)"))
            }
            ("native", Some(path)) => Ok(BackendSpec::Native(Some(PathBuf::from(path)))),
            ("openai", Some(rest)) => {
                let Some((base_url, model)) = rest.rsplit_once('#') else {
                    return Err(error(
                        "expected openai:URL#MODEL, e.g. openai:http://127.0.0.1:8080/v1#smollm2",
                    ));
                };
                if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                    return Err(error("the URL must start with http:// or https://"));
                }
                if model.is_empty() {
                    return Err(error("the model name after `#` is empty"));
                }
                Ok(BackendSpec::OpenAi {
                    base_url: base_url.trim_end_matches('/').to_string(),
                    model: model.to_string(),
                })
            }
            ("openai", None) => Err(error("expected openai:URL#MODEL")),
            ("fake", None) => Ok(BackendSpec::Fake(FakeMode::Seeded)),
            ("fake", Some("seeded")) => Ok(BackendSpec::Fake(FakeMode::Seeded)),
            ("fake", Some("echo")) => Ok(BackendSpec::Fake(FakeMode::Echo)),
            ("fake", Some(_)) => Err(error("the fake backend is fake:seeded or fake:echo")),
            _ => Err(error("expected native[:PATH], openai:URL#MODEL or fake[:seeded|echo]")),
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Native(None) => write!(formatter, "native"),
            BackendSpec::Native(Some(path)) => write!(formatter, "native:{}", path.display()),
            BackendSpec::OpenAi { base_url, model } => write!(formatter, "openai:{base_url}#{model}"),
            BackendSpec::Fake(FakeMode::Seeded) => write!(formatter, "fake:seeded"),
            BackendSpec::Fake(FakeMode::Echo) => write!(formatter, "fake:echo"),
        }
    }
}

impl Serialize for BackendSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BackendSpec, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for text in [
            "native",
            "native:models/SmolLM2-135M-Instruct.Q8_0.gguf",
            "openai:http://127.0.0.1:8080/v1#smollm2",
            "openai:https://api.openai.com/v1#gpt-4o-mini",
            "fake:seeded",
            "fake:echo",
        ] {
            let spec: BackendSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("fake".parse::<BackendSpec>().unwrap(), BackendSpec::Fake(FakeMode::Seeded));
        let trailing: BackendSpec = "openai:http://h:1/v1/#m".parse().unwrap();
        assert_eq!(trailing.to_string(), "openai:http://h:1/v1#m");
    }

    #[test]
    fn bad_specs_say_what_is_expected() {
        for (text, expected) in [
            ("openai:http://h/v1", "openai:URL#MODEL"),
            ("openai:ftp://h#m", "http://"),
            ("openai:http://h#", "empty"),
            ("native:", "native:PATH"),
            ("fake:loud", "fake:seeded"),
            ("vllm:x", "expected native"),
        ] {
            let error = text.parse::<BackendSpec>().unwrap_err().to_string();
            assert!(error.contains(text) && error.contains(expected), "{text}: {error}");
        }
    }
}
