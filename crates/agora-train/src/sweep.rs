//! Hyperparameter sweeps: grid and random search over any field of a training config,
//! read from agora's TOML or from the W&B-style JSON the Persuasion project used.
//!
//! Both formats have the same shape, so one reader handles them after parsing:
//!
//! ```toml
//! method = "random"          # or "grid"
//! count = 8                  # trials of a random search
//! base = "train.toml"        # the config the trials override (relative to this file)
//! [metric]
//! name = "eval/loss"
//! goal = "minimize"
//! [parameters."optimizer.learning_rate"]
//! min = 1e-6
//! max = 1e-4
//! distribution = "log_uniform"
//! [parameters."training.batch_size"]
//! values = [4, 8]
//! ```
//!
//! A parameter is `values = [...]`, `value = x`, or `min`/`max` with a `distribution`
//! (`uniform`, `int_uniform`, `log_uniform_values`; without one, `int_uniform` when both
//! bounds are integers, else `uniform`). `log_uniform` means bounds given as values in
//! agora's TOML but, as in W&B, natural-log exponents in JSON. Parameter names are dotted
//! config paths (`optimizer.learning_rate`) or the W&B/Hugging Face names the Persuasion
//! sweeps use (`learning_rate`, `num_epochs`, `lora_r`...), mapped by [`NAME_TO_PATH`].

use std::path::{Path, PathBuf};

use agora_core::SplitMix64;
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

/// W&B / Hugging Face Trainer names and the config paths they set.
pub const NAME_TO_PATH: [(&str, &str); 17] = [
    ("batch_size", "training.batch_size"),
    ("num_epochs", "training.epochs"),
    ("learning_rate", "optimizer.learning_rate"),
    ("weight_decay", "optimizer.weight_decay"),
    ("gradient_accumulation_steps", "training.gradient_accumulation_steps"),
    ("lr_scheduler_type", "schedule.kind"),
    ("warmup_ratio", "schedule.warmup_ratio"),
    ("beta", "dpo.beta"),
    ("max_length", "data.max_length"),
    ("max_prompt_length", "data.max_prompt_length"),
    ("lora_r", "lora.rank"),
    ("lora_alpha", "lora.alpha"),
    ("lora_dropout", "lora.dropout"),
    ("seed", "seed"),
    ("model_type", "model"),
    ("model_name", "model"),
    ("model", "model"),
];

/// The training config's top-level fields and sections a dotted path may start with.
const CONFIG_FIELDS: [&str; 3] = ["method", "model", "seed"];
const CONFIG_SECTIONS: [&str; 7] = ["data", "lora", "optimizer", "schedule", "training", "dpo", "eval"];

/// Top-level keys of a sweep file; W&B's descriptive ones are accepted and ignored.
const SWEEP_KEYS: [&str; 5] = ["method", "count", "base", "metric", "parameters"];
const IGNORED_WANDB_KEYS: [&str; 5] = ["name", "description", "project", "entity", "program"];

#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub method: SweepMethod,
    /// What ranks the trials; `None` leaves them in trial order.
    pub metric: Option<SweepMetric>,
    /// In file order; a grid varies the first one slowest.
    pub parameters: Vec<SweepParameter>,
    /// The training config the trials override, resolved against the sweep file's folder.
    pub base: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepMethod {
    /// Every combination of the parameters' values.
    Grid,
    /// `count` trials, each parameter drawn independently.
    Random { count: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepMetric {
    /// A metric name as the run logs it (`eval/loss`, `rewards/accuracies`...).
    pub name: String,
    pub goal: Goal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Minimize,
    Maximize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SweepParameter {
    /// A dotted config path: `optimizer.learning_rate`.
    pub path: String,
    pub values: Distribution,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// These values (drawn uniformly by a random search).
    Values(Vec<Value>),
    Uniform {
        min: f64,
        max: f64,
    },
    /// Uniform in log space between `min` and `max` (both > 0).
    LogUniform {
        min: f64,
        max: f64,
    },
    /// An integer in `min..=max`.
    IntUniform {
        min: i64,
        max: i64,
    },
}

/// One combination of overrides; `index` is its 0-based position in the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub index: usize,
    pub overrides: Vec<(String, Value)>,
}

impl Trial {
    /// `optimizer.learning_rate=0.0001, training.batch_size=4`, for tables and run names.
    pub fn describe(&self) -> String {
        let parts: Vec<String> =
            self.overrides.iter().map(|(path, value)| format!("{path}={value}")).collect();
        parts.join(", ")
    }
}

/// Reads a sweep file: JSON (W&B style) when it ends in `.json` or starts with `{`, TOML
/// otherwise.
pub fn read_sweep(path: &Path) -> Result<Sweep> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::io(path, source))?;
    let is_json = path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    let document: Value = if is_json {
        serde_json::from_str(&text)
            .map_err(|error| TrainError::config(path, format!("not valid JSON: {error}")))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|error| TrainError::config(path, format!("not valid TOML: {error}")))?;
        serde_json::to_value(table).map_err(|error| TrainError::config(path, error.to_string()))?
    };
    let Value::Object(document) = document else {
        return Err(TrainError::config(path, "expected an object of sweep settings"));
    };
    parse_sweep(path, &document, is_json)
}

fn parse_sweep(path: &Path, document: &Map<String, Value>, wandb: bool) -> Result<Sweep> {
    let error = |message: String| TrainError::config(path, message);
    for key in document.keys() {
        if !SWEEP_KEYS.contains(&key.as_str()) && !IGNORED_WANDB_KEYS.contains(&key.as_str()) {
            return Err(error(format!("unknown key `{key}` (known: {})", SWEEP_KEYS.join(", "))));
        }
    }
    let count = match document.get("count") {
        None => None,
        Some(value) => match value.as_u64().and_then(|count| usize::try_from(count).ok()) {
            Some(count) if count > 0 => Some(count),
            _ => return Err(error(format!("`count` must be a positive integer, found {value}"))),
        },
    };
    let method = match document.get("method").and_then(Value::as_str) {
        Some("grid") => SweepMethod::Grid,
        Some("random") => match count {
            Some(count) => SweepMethod::Random { count },
            None => return Err(error("a random search needs `count`, the number of trials".into())),
        },
        Some("bayes") => {
            return Err(error(
                "Bayesian search (`bayes`) is not supported; use \"grid\" or \"random\"".into(),
            ));
        }
        Some(other) => {
            return Err(error(format!("unknown `method` {other:?} (known: \"grid\", \"random\")")));
        }
        None => return Err(error("missing `method` (\"grid\" or \"random\")".into())),
    };
    let base = match document.get("base") {
        None => None,
        Some(Value::String(base)) => {
            Some(path.parent().map_or_else(|| PathBuf::from(base), |folder| folder.join(base)))
        }
        Some(other) => return Err(error(format!("`base` must be a path string, found {other}"))),
    };
    let metric = document.get("metric").map(|metric| parse_metric(path, metric)).transpose()?;
    let parameters = match document.get("parameters") {
        Some(Value::Object(parameters)) => parameters,
        Some(other) => return Err(error(format!("`parameters` must be a table, found {other}"))),
        None => return Err(error("missing `parameters`".into())),
    };
    let mut parsed: Vec<SweepParameter> = Vec::with_capacity(parameters.len());
    for (name, spec) in parameters {
        let config_path =
            config_path(name).map_err(|message| error(format!("parameter `{name}`: {message}")))?;
        if parsed.iter().any(|parameter| parameter.path == config_path) {
            return Err(error(format!("parameter `{name}`: `{config_path}` is swept twice")));
        }
        let values = parse_distribution(spec, wandb)
            .map_err(|message| error(format!("parameter `{name}`: {message}")))?;
        parsed.push(SweepParameter { path: config_path, values });
    }
    Ok(Sweep { method, metric, parameters: parsed, base })
}

fn parse_metric(path: &Path, metric: &Value) -> Result<SweepMetric> {
    let error = |message: &str| TrainError::config(path, format!("metric: {message}"));
    let Value::Object(metric) = metric else {
        return Err(error("expected a table with `name` and `goal`"));
    };
    let Some(name) = metric.get("name").and_then(Value::as_str) else {
        return Err(error("missing `name`"));
    };
    let goal = match metric.get("goal").and_then(Value::as_str) {
        None | Some("minimize") => Goal::Minimize,
        Some("maximize") => Goal::Maximize,
        Some(other) => return Err(error(&format!("unknown goal {other:?} (\"minimize\" or \"maximize\")"))),
    };
    Ok(SweepMetric { name: name.to_owned(), goal })
}

/// The config path a parameter name stands for.
fn config_path(name: &str) -> std::result::Result<String, String> {
    if let Some((_, path)) = NAME_TO_PATH.iter().find(|(known, _)| *known == name) {
        return Ok((*path).to_owned());
    }
    let first = name.split('.').next().unwrap_or_default();
    let is_field = CONFIG_FIELDS.contains(&name);
    let is_section_path = name.contains('.') && CONFIG_SECTIONS.contains(&first);
    if (is_field || is_section_path) && name.split('.').all(|part| !part.is_empty()) {
        return Ok(name.to_owned());
    }
    let known: Vec<&str> = NAME_TO_PATH.iter().map(|(known, _)| *known).collect();
    Err(format!(
        "unknown name; use a config path (`{}` or `section.field` with section one of {}) or one of: {}",
        CONFIG_FIELDS.join("`, `"),
        CONFIG_SECTIONS.join(", "),
        known.join(", ")
    ))
}

fn parse_distribution(spec: &Value, wandb: bool) -> std::result::Result<Distribution, String> {
    let spec = match spec {
        Value::Object(spec) => spec,
        Value::Array(values) => return values_distribution(values.clone()),
        Value::Null => return Err("expected values, found null".into()),
        scalar => return values_distribution(vec![scalar.clone()]),
    };
    if let Some(values) = spec.get("values") {
        let Value::Array(values) = values else {
            return Err(format!("`values` must be a list, found {values}"));
        };
        return values_distribution(values.clone());
    }
    if let Some(value) = spec.get("value") {
        return values_distribution(vec![value.clone()]);
    }
    let (Some(min), Some(max)) = (spec.get("min"), spec.get("max")) else {
        return Err("expected `values`, `value`, or `min` and `max`".into());
    };
    let both_integers = min.is_i64() && max.is_i64();
    let distribution = match spec.get("distribution") {
        None if both_integers => "int_uniform",
        None => "uniform",
        Some(Value::String(name)) => name.as_str(),
        Some(other) => return Err(format!("`distribution` must be a name, found {other}")),
    };
    let float = |value: &Value, name: &str| {
        value.as_f64().filter(|number| number.is_finite()).ok_or_else(|| format!("`{name}` must be a number"))
    };
    let (low, high) = (float(min, "min")?, float(max, "max")?);
    if low > high {
        return Err(format!("`min` ({low}) is above `max` ({high})"));
    }
    match distribution {
        "uniform" => Ok(Distribution::Uniform { min: low, max: high }),
        "int_uniform" => match (min.as_i64(), max.as_i64()) {
            (Some(min), Some(max)) => Ok(Distribution::IntUniform { min, max }),
            _ => Err("`int_uniform` needs integer `min` and `max`".into()),
        },
        // W&B's `log_uniform` takes exponents; agora's TOML takes the values themselves.
        "log_uniform" if wandb => Ok(Distribution::LogUniform { min: low.exp(), max: high.exp() }),
        "log_uniform" | "log_uniform_values" if low > 0.0 => {
            Ok(Distribution::LogUniform { min: low, max: high })
        }
        "log_uniform" | "log_uniform_values" => Err("a log-uniform range needs `min` > 0".into()),
        other => Err(format!(
            "unsupported distribution {other:?} (supported: uniform, int_uniform, log_uniform, log_uniform_values)"
        )),
    }
}

fn values_distribution(values: Vec<Value>) -> std::result::Result<Distribution, String> {
    if values.is_empty() {
        return Err("`values` is empty".into());
    }
    if values.iter().any(Value::is_null) {
        return Err("a value is null, which a config cannot hold".into());
    }
    Ok(Distribution::Values(values))
}

impl Sweep {
    /// The trials: for a grid, the cartesian product of the values in file order (the
    /// last parameter varies fastest); for a random search, `count` draws from SplitMix64
    /// seeded with `seed` (the same seed gives the same trials).
    pub fn trials(&self, seed: u64) -> Result<Vec<Trial>> {
        match self.method {
            SweepMethod::Grid => self.grid(),
            SweepMethod::Random { count } => {
                let mut rng = SplitMix64::new(seed);
                Ok((0..count)
                    .map(|index| Trial {
                        index,
                        overrides: self
                            .parameters
                            .iter()
                            .map(|parameter| (parameter.path.clone(), draw(&parameter.values, &mut rng)))
                            .collect(),
                    })
                    .collect())
            }
        }
    }

    fn grid(&self) -> Result<Vec<Trial>> {
        let mut lists: Vec<(&str, &[Value])> = Vec::with_capacity(self.parameters.len());
        for parameter in &self.parameters {
            let Distribution::Values(values) = &parameter.values else {
                return Err(TrainError::Other(format!(
                    "a grid search needs a list of values for `{}`, not a range; use values = [...] or method = \"random\"",
                    parameter.path
                )));
            };
            lists.push((&parameter.path, values));
        }
        let mut combinations: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (path, values) in lists {
            combinations = combinations
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |value| {
                        let mut combination = prefix.clone();
                        combination.push((path.to_owned(), value.clone()));
                        combination
                    })
                })
                .collect();
        }
        Ok(combinations
            .into_iter()
            .enumerate()
            .map(|(index, overrides)| Trial { index, overrides })
            .collect())
    }

    /// How many trials [`trials`](Self::trials) gives.
    pub fn trial_count(&self) -> usize {
        match self.method {
            SweepMethod::Random { count } => count,
            SweepMethod::Grid => self
                .parameters
                .iter()
                .map(|parameter| match &parameter.values {
                    Distribution::Values(values) => values.len(),
                    _ => 0,
                })
                .product(),
        }
    }
}

fn draw(distribution: &Distribution, rng: &mut SplitMix64) -> Value {
    match distribution {
        Distribution::Values(values) => {
            values.get(rng.below(values.len().max(1))).cloned().unwrap_or(Value::Null)
        }
        Distribution::Uniform { min, max } => float_value(min + (max - min) * rng.next_f64()),
        Distribution::LogUniform { min, max } => {
            let (low, high) = (min.ln(), max.ln());
            float_value((low + (high - low) * rng.next_f64()).exp())
        }
        Distribution::IntUniform { min, max } => {
            let span = max.abs_diff(*min).saturating_add(1);
            let offset = ((rng.next_u64() as u128 * span as u128) >> 64) as u64;
            Value::from(min.saturating_add_unsigned(offset))
        }
    }
}

fn float_value(number: f64) -> Value {
    serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
}

/// Sets each dotted path of `overrides` in a config document, creating missing tables. A
/// value of the wrong kind is left for the config's own deserialisation to report.
pub fn apply_overrides(config: &mut toml::Value, overrides: &[(String, Value)]) -> Result<()> {
    for (path, value) in overrides {
        let converted = toml::Value::try_from(value).map_err(|error| {
            TrainError::Other(format!("override `{path}` = {value}: not a TOML value: {error}"))
        })?;
        let parts: Vec<&str> = path.split('.').collect();
        let Some((last, tables)) = parts.split_last() else {
            continue;
        };
        let mut current = &mut *config;
        for (depth, part) in tables.iter().enumerate() {
            let toml::Value::Table(table) = current else {
                return Err(TrainError::Other(format!(
                    "override `{path}`: `{}` is not a table",
                    parts[..depth].join(".")
                )));
            };
            current = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
        let toml::Value::Table(table) = current else {
            return Err(TrainError::Other(format!(
                "override `{path}`: `{}` is not a table",
                tables.join(".")
            )));
        };
        table.insert(last.to_string(), converted);
    }
    Ok(())
}

/// Trial indices best first by `goal`; trials without a metric (or with NaN) come last,
/// ties and missing ones in trial order. `final_metrics[i]` is trial i's value.
pub fn rank_trials(goal: Goal, final_metrics: &[Option<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..final_metrics.len()).collect();
    let key = |index: usize| final_metrics.get(index).copied().flatten().filter(|value| !value.is_nan());
    order.sort_by(|&left, &right| match (key(left), key(right)) {
        (Some(a), Some(b)) => match goal {
            Goal::Minimize => a.total_cmp(&b),
            Goal::Maximize => b.total_cmp(&a),
        },
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    order
}
