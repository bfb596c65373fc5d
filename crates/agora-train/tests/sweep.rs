//! Sweep files (agora's TOML and the Persuasion project's W&B-style JSON) to trials, and
//! trials applied to a training config.

use std::path::PathBuf;

use agora_train::{
    Distribution, Goal, SweepMethod, SweepMetric, Trial, apply_overrides, rank_trials, read_sweep,
};
use serde_json::{Value, json};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("test_data").join(name)
}

fn overrides(trial: &Trial) -> Vec<(&str, Value)> {
    trial.overrides.iter().map(|(path, value)| (path.as_str(), value.clone())).collect()
}

#[test]
fn toml_grid_is_the_product_in_file_order() {
    let sweep = read_sweep(&fixture("sweep.toml")).unwrap();
    assert_eq!(sweep.method, SweepMethod::Grid);
    assert_eq!(sweep.base, Some(fixture("train.toml")));
    assert_eq!(sweep.metric, Some(SweepMetric { name: "eval/loss".into(), goal: Goal::Minimize }));
    let paths: Vec<&str> = sweep.parameters.iter().map(|parameter| parameter.path.as_str()).collect();
    assert_eq!(paths, ["optimizer.learning_rate", "dpo.beta"]);
    assert_eq!(sweep.trial_count(), 6);

    let trials = sweep.trials(0).unwrap();
    assert_eq!(trials.len(), 6);
    let expected = [(1e-5, 0.1), (1e-5, 0.25), (1e-5, 0.5), (5e-6, 0.1), (5e-6, 0.25), (5e-6, 0.5)];
    for (index, (trial, (learning_rate, beta))) in trials.iter().zip(expected).enumerate() {
        assert_eq!(trial.index, index);
        assert_eq!(
            overrides(trial),
            [("optimizer.learning_rate", json!(learning_rate)), ("dpo.beta", json!(beta))]
        );
    }
    assert_eq!(trials[1].describe(), "optimizer.learning_rate=0.00001, dpo.beta=0.25");
    // A grid ignores the seed.
    assert_eq!(sweep.trials(7).unwrap(), trials);
}

#[test]
fn random_search_is_reproducible_and_stays_in_its_ranges() {
    let sweep = read_sweep(&fixture("sweep_random.toml")).unwrap();
    assert_eq!(sweep.method, SweepMethod::Random { count: 20 });
    assert_eq!(sweep.metric.as_ref().map(|metric| metric.goal), Some(Goal::Maximize));
    assert_eq!(sweep.parameters[0].values, Distribution::LogUniform { min: 1e-6, max: 1e-4 });
    assert_eq!(sweep.parameters[1].values, Distribution::IntUniform { min: 4, max: 16 });
    assert_eq!(sweep.parameters[2].values, Distribution::Uniform { min: 0.0, max: 0.2 });

    let trials = sweep.trials(42).unwrap();
    assert_eq!(trials.len(), 20);
    assert_eq!(sweep.trials(42).unwrap(), trials, "same seed, same trials");
    assert_ne!(sweep.trials(43).unwrap(), trials, "another seed, other trials");
    let mut kinds = std::collections::BTreeSet::new();
    let mut ranks = std::collections::BTreeSet::new();
    for trial in &trials {
        let values = overrides(trial);
        let learning_rate = values[0].1.as_f64().unwrap();
        assert!((1e-6..=1e-4).contains(&learning_rate), "{learning_rate}");
        let rank = values[1].1.as_i64().expect("an integer rank");
        assert!((4..=16).contains(&rank));
        ranks.insert(rank);
        let warmup = values[2].1.as_f64().unwrap();
        assert!((0.0..=0.2).contains(&warmup));
        kinds.insert(values[3].1.as_str().unwrap().to_owned());
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["cosine", "linear"]);
    assert!(ranks.len() > 3, "ranks vary: {ranks:?}");
}

#[test]
fn wandb_json_maps_names_to_config_paths() {
    let sweep = read_sweep(&fixture("sweep_wandb.json")).unwrap();
    assert_eq!(sweep.method, SweepMethod::Grid);
    assert_eq!(sweep.base, None);
    let paths: Vec<&str> = sweep.parameters.iter().map(|parameter| parameter.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "training.batch_size",
            "training.epochs",
            "optimizer.learning_rate",
            "lora.rank",
            "schedule.kind",
            "model"
        ]
    );
    let trials = sweep.trials(0).unwrap();
    assert_eq!(trials.len(), 8);
    assert_eq!(
        overrides(&trials[7]),
        [
            ("training.batch_size", json!(4)),
            ("training.epochs", json!(1)),
            ("optimizer.learning_rate", json!(2e-6)),
            ("lora.rank", json!(16)),
            ("schedule.kind", json!("cosine")),
            ("model", json!("models/SmolLM2-135M-Instruct.Q8_0.gguf")),
        ]
    );
}

#[test]
fn the_persuasion_projects_sweep_config_reads() {
    let path = crate_dir().join("../../../shared/data/persuasion/sweep_config.json");
    if !crate_dir().join("../../../shared/data").is_dir() {
        eprintln!("skipped: ../shared/data is absent");
        return;
    }
    let sweep = read_sweep(&path).unwrap();
    assert_eq!(sweep.metric, None);
    let trials = sweep.trials(0).unwrap();
    assert_eq!(trials.len(), 1);
    assert_eq!(
        overrides(&trials[0]),
        [
            ("training.batch_size", json!(4)),
            ("training.epochs", json!(5)),
            ("optimizer.learning_rate", json!(2e-6)),
            ("model", json!("gpt2")),
            ("data.max_length", json!(1024)),
            ("dpo.beta", json!(0.25)),
            ("training.gradient_accumulation_steps", json!(8)),
            ("schedule.kind", json!("cosine")),
            ("optimizer.weight_decay", json!(0.05)),
        ]
    );
}

#[test]
fn overrides_set_dotted_paths_and_create_tables() {
    let mut config: toml::Value = toml::from_str(
        "method = \"dpo\"\nmodel = \"models/a.gguf\"\n[optimizer]\nlearning_rate = 1e-5\nweight_decay = 0.0\n",
    )
    .unwrap();
    let trial = vec![
        ("optimizer.learning_rate".to_owned(), json!(2e-6)),
        ("lora.rank".to_owned(), json!(16)),
        ("schedule.kind".to_owned(), json!("cosine")),
        ("seed".to_owned(), json!(7)),
        // The wrong kind is kept as given: the config's own reading reports it.
        ("training.batch_size".to_owned(), json!("four")),
    ];
    apply_overrides(&mut config, &trial).unwrap();
    let expected: toml::Value = toml::from_str(
        "method = \"dpo\"\nmodel = \"models/a.gguf\"\nseed = 7\n\
         [optimizer]\nlearning_rate = 2e-6\nweight_decay = 0.0\n\
         [lora]\nrank = 16\n[schedule]\nkind = \"cosine\"\n[training]\nbatch_size = \"four\"\n",
    )
    .unwrap();
    assert_eq!(config, expected);

    let through_a_string =
        apply_overrides(&mut config, &[("model.name".to_owned(), json!("x"))]).unwrap_err();
    assert_eq!(through_a_string.to_string(), "override `model.name`: `model` is not a table");
    let null = apply_overrides(&mut config, &[("seed".to_owned(), Value::Null)]).unwrap_err();
    assert!(null.to_string().starts_with("override `seed` = null: not a TOML value"), "{null}");
}

/// Writes a sweep file and returns its reading error (the path replaced by `FILE`).
fn sweep_error(name: &str, contents: &str) -> String {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join(name);
    std::fs::write(&path, contents).unwrap();
    read_sweep(&path).unwrap_err().to_string().replace(&path.display().to_string(), "FILE")
}

#[test]
fn bad_sweep_files_are_clear_errors() {
    let unknown = sweep_error("s.json", r#"{"method":"grid","parameters":{"lr":{"values":[1]}}}"#);
    assert!(unknown.starts_with("FILE: parameter `lr`: unknown name; use a config path"), "{unknown}");
    assert!(unknown.contains("learning_rate, weight_decay"), "lists the known names: {unknown}");
    let cases = [
        (
            sweep_error("s.json", r#"{"method":"bayes","parameters":{}}"#),
            "FILE: Bayesian search (`bayes`) is not supported; use \"grid\" or \"random\"",
        ),
        (
            sweep_error("s.toml", "method = \"random\"\n[parameters.seed]\nvalues = [1, 2]\n"),
            "FILE: a random search needs `count`, the number of trials",
        ),
        (
            sweep_error("s.toml", "method = \"grid\"\n[parameters.beta]\nmin = 0.5\nmax = 0.1\n"),
            "FILE: parameter `beta`: `min` (0.5) is above `max` (0.1)",
        ),
        (
            sweep_error(
                "s.toml",
                "method = \"grid\"\n[parameters.beta]\nmin = 0.1\nmax = 0.5\ndistribution = \"normal\"\n",
            ),
            "FILE: parameter `beta`: unsupported distribution \"normal\" (supported: uniform, int_uniform, log_uniform, log_uniform_values)",
        ),
        (
            sweep_error("s.toml", "method = \"grid\"\nparameters = {}\nseeds = 3\n"),
            "FILE: unknown key `seeds` (known: method, count, base, metric, parameters)",
        ),
        (
            sweep_error("s.toml", "method = \"grid\"\n[parameters.beta]\nvalues = []\n"),
            "FILE: parameter `beta`: `values` is empty",
        ),
        (
            sweep_error("s.toml", "method = \"grid\"\n[parameters]\nbeta = [0.1]\n\"dpo.beta\" = [0.2]\n"),
            "FILE: parameter `dpo.beta`: `dpo.beta` is swept twice",
        ),
        (sweep_error("s.toml", "method = \n"), "FILE: not valid TOML: "),
    ];
    for (got, expected) in cases {
        assert!(got.starts_with(expected), "got: {got}\nexpected: {expected}");
    }

    // A grid over a range is refused when the trials are made.
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.toml");
    std::fs::write(&path, "method = \"grid\"\n[parameters.beta]\nmin = 0.1\nmax = 0.5\n").unwrap();
    let error = read_sweep(&path).unwrap().trials(0).unwrap_err();
    assert!(error.to_string().starts_with("a grid search needs a list of values for `dpo.beta`"), "{error}");
}

#[test]
fn wandb_log_uniform_takes_exponents() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("s.json");
    std::fs::write(
        &path,
        r#"{"method":"random","count":3,"parameters":{"learning_rate":{"distribution":"log_uniform","min":-2,"max":0}}}"#,
    )
    .unwrap();
    let sweep = read_sweep(&path).unwrap();
    assert_eq!(sweep.parameters[0].values, Distribution::LogUniform { min: (-2f64).exp(), max: 1.0 });
}

#[test]
fn trials_rank_by_the_goal_with_missing_metrics_last() {
    let metrics = [Some(0.5), None, Some(0.2), Some(f64::NAN), Some(0.9), Some(0.2)];
    assert_eq!(rank_trials(Goal::Minimize, &metrics), [2, 5, 0, 4, 1, 3]);
    assert_eq!(rank_trials(Goal::Maximize, &metrics), [4, 0, 2, 5, 1, 3]);
    assert!(rank_trials(Goal::Minimize, &[]).is_empty());
}
