//! Opens the backend a `--backend` flag (or an experiment file) names. The native model is
//! resolved like `--model` (the embedded default when no path is given).

use std::sync::Arc;

use agora_llm::{Backend, BackendSpec, FakeBackend, NativeBackend, NativeOptions};
use anyhow::Context;

use crate::args::ModelArgs;
use crate::commands::model::load_engine;

/// Opens `spec`; `model` supplies the models folder and threads for `native` (and the
/// model itself when the spec names none).
#[allow(dead_code)] // used by `agora serve`, which is being added
pub fn open_backend(spec: &BackendSpec, model: &ModelArgs) -> anyhow::Result<Arc<dyn Backend>> {
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
        BackendSpec::OpenAi { .. } => anyhow::bail!("backend `{spec}` is not available in this build yet"),
    }
}
