//! Reads the files an experiment names — SDF persona JSON, topic and instruction `.txt`
//! files or folders, an SDF config — through agora-corpus's SDF readers, as they are.

use std::path::Path;

use agora_core::Persona;
use agora_corpus::sdf;
use agora_sim::experiment::{AnnotationSpec, DiscussionsSpec, Paths};
use agora_sim::plan::{DiscussionInputs, FrameworkSettings, NamedText};
use agora_sim::policy::TurnPolicy;
use agora_sim::prompt::Agent;
use anyhow::Context;

use super::LoadedExperiment;

pub fn personas(loaded: &LoadedExperiment, paths: &Paths, field: &str) -> anyhow::Result<Vec<Persona>> {
    let mut personas = Vec::new();
    for path in &paths.0 {
        let path = loaded.resolve(path);
        personas.extend(sdf::read_personas(&path).with_context(|| format!("{field}: {}", path.display()))?);
    }
    Ok(personas)
}

pub fn texts(loaded: &LoadedExperiment, paths: &Paths, field: &str) -> anyhow::Result<Vec<NamedText>> {
    let mut texts = Vec::new();
    for path in &paths.0 {
        let path = loaded.resolve(path);
        let read = sdf::read_texts(&path).with_context(|| format!("{field}: {}", path.display()))?;
        texts.extend(read.into_iter().map(|text| NamedText { name: text.name, text: text.text }));
    }
    Ok(texts)
}

pub fn discussion_inputs(
    loaded: &LoadedExperiment,
    spec: &DiscussionsSpec,
) -> anyhow::Result<DiscussionInputs> {
    let mut inputs = DiscussionInputs {
        personas: personas(loaded, &spec.personas, "discussions.personas")?,
        topics: texts(loaded, &spec.topics, "discussions.topics")?,
        user_instructions: texts(loaded, &spec.user_instructions, "discussions.user_instructions")?,
        ..DiscussionInputs::default()
    };
    if let Some(moderator) = &spec.moderator {
        inputs.moderator_instructions =
            texts(loaded, &moderator.instructions, "discussions.moderator.instructions")?;
        if let Some(path) = &moderator.persona {
            let path = loaded.resolve(path);
            let read = sdf::read_personas(&path)
                .with_context(|| format!("discussions.moderator.persona: {}", path.display()))?;
            inputs.moderator_persona = read.into_iter().next();
        }
    }
    if let Some(path) = &spec.framework_config {
        inputs.framework = framework_settings(&loaded.resolve(path))?;
    }
    Ok(inputs)
}

/// Turns, context window and turn policy of an SDF config; from the 2026 YAML also the
/// users per discussion and the context prompt.
fn framework_settings(path: &Path) -> anyhow::Result<FrameworkSettings> {
    let place = format!("discussions.framework_config: {}", path.display());
    let config = sdf::read_conversation_config(path).with_context(|| place.clone())?;
    let probability = config.turn_manager_config.as_ref().and_then(|settings| settings.respond_probability);
    let turn_policy = match (&config.turn_manager_type, probability) {
        (Some(kind), _) => {
            Some(TurnPolicy::from_framework(kind, probability).with_context(|| place.clone())?)
        }
        // The 2026 YAML names no policy (its runner took it on the command line) but
        // its respond_probability only means something for random_weighted.
        (None, Some(probability)) => Some(TurnPolicy::RespondBack { probability }),
        (None, None) => None,
    };
    let variables =
        config.extra.get("discussions").and_then(|discussions| discussions.get("experiment_variables"));
    let users = variables
        .and_then(|variables| variables.get("num_users"))
        .and_then(serde_json::Value::as_u64)
        .map(|users| users as usize);
    let context = variables
        .and_then(|variables| variables.get("context_prompt"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    Ok(FrameworkSettings {
        turns: config.conv_len,
        context_window: config.history_ctx_len.map(|length| length as usize),
        turn_policy,
        users,
        context,
    })
}

/// The annotators: one agent per persona, all with the instruction file's text.
pub fn annotators(loaded: &LoadedExperiment, spec: &AnnotationSpec) -> anyhow::Result<Vec<Agent>> {
    let personas = personas(loaded, &spec.annotators, "annotation.annotators")?;
    let path = loaded.resolve(&spec.instructions);
    let instructions =
        sdf::read_texts(&path).with_context(|| format!("annotation.instructions: {}", path.display()))?;
    let Some(instruction) = instructions.into_iter().next() else {
        anyhow::bail!("annotation.instructions: {}: no instruction file", path.display());
    };
    if personas.is_empty() {
        anyhow::bail!("annotation.annotators: no personas found");
    }
    Ok(personas
        .into_iter()
        .map(|persona| Agent {
            name: persona.name.clone(),
            persona,
            instructions: instruction.text.clone(),
            instructions_name: instruction.name.clone(),
        })
        .collect())
}
