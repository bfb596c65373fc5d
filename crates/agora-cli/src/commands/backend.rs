//! Opens the backend a `--backend` flag (or an experiment file) names. The native model is
//! resolved like `--model` (the embedded default when no path is given).

use std::sync::Arc;

use agora_llm::{ApiKey, Backend, BackendSpec, FakeBackend, OpenAiBackend, OpenAiConfig};

use crate::args::ModelArgs;

/// Opens `spec`; `model` supplies the models folder and threads for `native`, and the
/// variable that holds the API key for `openai:`.
pub fn open_backend(spec: &BackendSpec, model: &ModelArgs) -> anyhow::Result<Arc<dyn Backend>> {
    match spec {
        BackendSpec::Fake(mode) => Ok(Arc::new(FakeBackend::new(*mode))),
        BackendSpec::OpenAi { base_url, model: name } => {
            let api_key = api_key(model.api_key_env.as_deref())?;
            let config = OpenAiConfig { api_key, ..OpenAiConfig::new(base_url.clone(), name.clone()) };
            Ok(Arc::new(OpenAiBackend::new(config)?))
        }
        BackendSpec::Native(_) => anyhow::bail!("backend `{spec}` is not available in this build yet"),
    }
}

/// The key from `variable` when one is named (then it must be set), else from the usual
/// variables, else none (local servers need none).
fn api_key(variable: Option<&str>) -> anyhow::Result<Option<ApiKey>> {
    match variable {
        Some(variable) => match std::env::var(variable) {
            Ok(key) if !key.is_empty() => Ok(Some(ApiKey::new(key))),
            _ => anyhow::bail!("--api-key-env {variable}: the variable is not set or empty"),
        },
        None => Ok(ApiKey::from_env()),
    }
}
