//! Hub repo ids resolved in a fake Hugging Face cache (built in a tempdir; the resolver takes the
//! cache root as a parameter, and the binary gets it through HF_HUB_CACHE in a subprocess).

use std::path::{Path, PathBuf};
use std::process::Command;

use lora_qat::checkpoint::{resolve_in_cache, resolve_model, Checkpoint};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base")
}

/// `root/models--tiny--gpt-oss/{refs/main, blobs/, snapshots/<COMMIT>/}` with snapshot files as
/// symlinks into blobs, the way huggingface_hub lays them out.
fn fake_cache() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--tiny--gpt-oss");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (i, e) in std::fs::read_dir(fixture()).unwrap().enumerate() {
        let e = e.unwrap();
        let blob = repo.join("blobs").join(format!("blob{i:04}"));
        std::fs::copy(e.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i:04}"), snap.join(e.file_name()))
            .unwrap();
    }
    tmp
}

#[test]
fn resolves_main_and_commit_revisions() {
    let cache = fake_cache();
    let snap = cache
        .path()
        .join("models--tiny--gpt-oss/snapshots")
        .join(COMMIT);
    assert_eq!(
        resolve_in_cache("tiny/gpt-oss", cache.path()).unwrap(),
        snap
    );
    assert_eq!(
        resolve_in_cache(&format!("tiny/gpt-oss@{COMMIT}"), cache.path()).unwrap(),
        snap
    );
    let ck = Checkpoint::open(&snap).unwrap();
    assert_eq!(ck.config().num_local_experts, 8);
}

#[test]
fn missing_repo_says_how_to_download() {
    let cache = fake_cache();
    let err = format!(
        "{:#}",
        resolve_in_cache("openai/gpt-oss-120b", cache.path()).unwrap_err()
    );
    assert!(err.contains("openai/gpt-oss-120b"), "{err}");
    assert!(err.contains("hf download openai/gpt-oss-120b"), "{err}");
    assert!(err.contains("not in the local Hugging Face cache"), "{err}");
    let err = format!(
        "{:#}",
        resolve_in_cache("tiny/gpt-oss@v2", cache.path()).unwrap_err()
    );
    assert!(err.contains("v2") && err.contains("--revision v2"), "{err}");
}

#[test]
fn incomplete_snapshot_lists_missing_shards() {
    let cache = fake_cache();
    let repo = cache.path().join("models--tiny--gpt-oss");
    // A dangling link: the blob was never downloaded.
    let blob = std::fs::read_link(
        repo.join("snapshots")
            .join(COMMIT)
            .join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(repo.join("snapshots").join(COMMIT).join(&blob)).unwrap();
    let err = format!(
        "{:#}",
        resolve_in_cache("tiny/gpt-oss", cache.path()).unwrap_err()
    );
    assert!(err.contains("incomplete"), "{err}");
    assert!(err.contains("model-00001-of-00001.safetensors"), "{err}");
    assert!(!err.contains("model-00000-of-00001.safetensors"), "{err}");
}

#[test]
fn local_directories_and_bad_specs() {
    assert_eq!(
        resolve_model(fixture().to_str().unwrap()).unwrap(),
        fixture()
    );
    let err = format!("{:#}", resolve_model("./no/such/dir").unwrap_err());
    assert!(err.contains("no such directory"), "{err}");
    let cfg = fixture().join("config.json");
    assert!(resolve_model(cfg.to_str().unwrap()).is_err());
}

#[test]
fn binary_resolves_through_hf_hub_cache() {
    let cache = fake_cache();
    let run = |spec: &str| {
        Command::new(env!("CARGO_BIN_EXE_lora-qat"))
            .args(["inspect", spec, "--no-scan"])
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HOME")
            .env_remove("HF_HUB_OFFLINE")
            // a closed local port: the download is tried and fails at once, never the real hub
            .env("HF_ENDPOINT", "http://127.0.0.1:1")
            .output()
            .unwrap()
    };
    let ok = run("tiny/gpt-oss");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(COMMIT), "{stdout}");
    assert!(stdout.contains("validation:"), "{stdout}");

    let t0 = std::time::Instant::now();
    let missing = run("openai/gpt-oss-20b");
    assert!(!missing.status.success());
    assert!(
        t0.elapsed().as_secs() < 5,
        "an unreachable hub fails in seconds"
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("downloading failed: cannot reach http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hf download openai/gpt-oss-20b"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&cache.path().display().to_string()),
        "{stderr}"
    );
}

#[test]
fn offline_mode_downloads_nothing() {
    let cache = fake_cache();
    let out = Command::new(env!("CARGO_BIN_EXE_lora-qat"))
        .args(["inspect", "openai/gpt-oss-120b", "--no-scan"])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HF_HUB_OFFLINE is set, so nothing is downloaded"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hf download openai/gpt-oss-120b"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}
