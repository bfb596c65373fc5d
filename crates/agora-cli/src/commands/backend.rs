//! Opens the backend a `--backend` flag (or an experiment file) names. The native model is
//! resolved like `--model` (the embedded default when no path is given).

use std::sync::Arc;

use agora_llm::{Backend, BackendSpec, FakeBackend};

use crate::args::ModelArgs;

/// Opens `spec`; `model` supplies the models folder and threads for `native`.
#[allow(dead_code)] // used by `agora serve`, which is being added
pub fn open_backend(spec: &BackendSpec, model: &ModelArgs) -> anyhow::Result<Arc<dyn Backend>> {
    let _ = model;
    match spec {
        BackendSpec::Fake(mode) => Ok(Arc::new(FakeBackend::new(*mode))),
        BackendSpec::Native(_) | BackendSpec::OpenAi { .. } => {
            anyhow::bail!("backend `{spec}` is not available in this build yet")
        }
    }
}
