//! `agora init`: create the workspace folder and its store.

use crate::settings::Settings;

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let existed = settings.store_path().is_file();
    let store = settings.open_or_create_store()?;
    let verb = if existed { "already initialised" } else { "initialised" };
    if settings.json {
        crate::output::print_json(&serde_json::json!({
            "store": store.path(),
            "schema_version": store.schema_version()?,
            "created": !existed,
        }))
    } else {
        println!("{} ({verb}, schema v{})", store.path().display(), store.schema_version()?);
        Ok(())
    }
}
