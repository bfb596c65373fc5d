//! Opens the backend a `--backend` flag (or an experiment file) names. The native model is
//! resolved like `--model` (the embedded default when no path is given).

use std::sync::Arc;

use agora_llm::{
    ApiKey, Backend, BackendSpec, FakeBackend, NativeBackend, NativeOptions, OpenAiBackend, OpenAiConfig,
};
use anyhow::Context;

use crate::args::ModelArgs;
use crate::commands::model::load_engine;

/// Opens `spec`; `model` supplies the models folder and threads for `native` (and the
/// model itself when the spec names none), and the variable that holds the API key for
/// `openai:`.
pub fn open_backend(spec: &BackendSpec, model: &ModelArgs) -> anyhow::Result<Arc<dyn Backend>> {
    open_backend_with(spec, model, None)
}

/// [`open_backend`], letting an `openai:` backend keep `concurrency` requests in flight
/// (its default is 8): an experiment asks for as many as it runs at once.
pub fn open_backend_with(
    spec: &BackendSpec,
    model: &ModelArgs,
    concurrency: Option<usize>,
) -> anyhow::Result<Arc<dyn Backend>> {
    match spec {
        BackendSpec::Fake(mode) => Ok(Arc::new(FakeBackend::new(*mode))),
        BackendSpec::Native(path) => {
            let reference = match path {
                Some(path) => Some(
                    path.to_str()
                        .with_context(|| format!("backend `{spec}`: the path is not valid UTF-8"))?
                        .to_string(),
                ),
                None => model.model.clone(),
            };
            let args = ModelArgs { model: reference, ..model.clone() };
            let engine = load_engine(&args).with_context(|| format!("backend `{spec}`"))?;
            let backend = NativeBackend::new(engine, NativeOptions::default())
                .with_context(|| format!("backend `{spec}`"))?;
            Ok(Arc::new(backend))
        }
        BackendSpec::OpenAi { base_url, model: name } => {
            let api_key = api_key(model.api_key_env.as_deref())?;
            let mut config = OpenAiConfig { api_key, ..OpenAiConfig::new(base_url.clone(), name.clone()) };
            if let Some(concurrency) = concurrency {
                config.max_concurrency = concurrency.max(1);
            }
            Ok(Arc::new(OpenAiBackend::new(config)?))
        }
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
