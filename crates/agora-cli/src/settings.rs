//! Resolves flags and environment into the settings commands run with, before any work
//! starts, so commands never read the environment themselves.

use std::path::PathBuf;

use agora_store::{STORE_FILE, Store};
use anyhow::Context;

use crate::args::GlobalArgs;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The workspace folder; the store is `<workspace>/agora.sqlite`.
    pub workspace: PathBuf,
    pub json: bool,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> Settings {
        Settings { workspace: global.workspace.clone(), json: global.json }
    }

    pub fn store_path(&self) -> PathBuf {
        self.workspace.join(STORE_FILE)
    }

    /// Opens the workspace store, which must exist.
    pub fn open_store(&self) -> anyhow::Result<Store> {
        Ok(Store::open_existing(&self.store_path())?)
    }

    /// Opens the workspace store, creating the folder and the store when missing.
    pub fn open_or_create_store(&self) -> anyhow::Result<Store> {
        std::fs::create_dir_all(&self.workspace)
            .with_context(|| format!("cannot create workspace folder {}", self.workspace.display()))?;
        Ok(Store::open(&self.store_path())?)
    }
}
