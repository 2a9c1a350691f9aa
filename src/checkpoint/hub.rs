//! `--base openai/gpt-oss-120b`: hub repo ids resolved through the local Hugging Face cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`; `models--org--name/`
//! with `refs/<revision>` and `snapshots/<commit>/`). Files missing from the cache are downloaded
//! when online (`download.rs`: a short connect check first; `HF_HUB_OFFLINE=1` downloads nothing), so nothing
//! can hang offline; missing files produce an error that says how to download them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

use super::index::{ShardIndex, INDEX_FILE, SINGLE_FILE};

/// Resolves `spec` to a model directory: an existing local directory as is, otherwise a hub
/// repo id `org/name` (optionally `org/name@revision`) looked up in the local cache.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("{spec} is a file, not a model directory");
    }
    if parse_repo_id(spec).is_none() {
        bail!("{spec}: no such directory (and not a hub repo id of the form `org/name`)");
    }
    let root = default_cache_root()?;
    match resolve_in_cache(spec, &root) {
        Ok(dir) => Ok(dir),
        Err(missing) if super::download::offline() => {
            Err(missing.context("HF_HUB_OFFLINE is set, so nothing is downloaded"))
        }
        Err(missing) => match super::download::download(spec, &root) {
            Ok(_) => resolve_in_cache(spec, &root),
            Err(e) => Err(missing.context(format!("downloading failed: {e:#}"))),
        },
    }
}

/// The hub cache directory from the environment, as huggingface_hub picks it.
pub fn default_cache_root() -> Result<PathBuf> {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(v));
        }
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join("hub"));
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("huggingface").join("hub"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("cannot locate the Hugging Face cache: set HF_HUB_CACHE or HF_HOME")?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub"))
}

/// `org/name[@revision]` → (`org/name`, revision); `None` if `spec` is not a repo id.
pub fn parse_repo_id(spec: &str) -> Option<(&str, &str)> {
    let (id, rev) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(org) && ok(name) && !rev.contains("..")).then_some((id, rev))
}

/// Resolves the hub repo id `spec` (`org/name[@revision]`) in the cache at `cache_root`, and
/// checks that the snapshot holds the config and every safetensors shard.
pub fn resolve_in_cache(spec: &str, cache_root: &Path) -> Result<PathBuf> {
    let Some((id, rev)) = parse_repo_id(spec) else {
        bail!("{spec} is not a hub repo id of the form `org/name[@revision]`");
    };
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, rev.to_string());
    let repo_dir = cache_root.join(repo.folder_name());
    let how = download_hint(id, rev, cache_root);
    if !repo_dir.is_dir() {
        bail!(
            "{id} is not in the local Hugging Face cache ({} does not exist); {how}",
            repo_dir.display()
        );
    }
    let snapshot = match Cache::new(cache_root.to_path_buf())
        .repo(repo)
        .get("config.json")
    {
        Some(config) => config
            .parent()
            .map(Path::to_path_buf)
            .context("cached config.json has no parent directory")?,
        None => snapshot_dir(&repo_dir, rev).with_context(|| format!("{id}: {how}"))?,
    };
    let missing = missing_files(&snapshot)?;
    if !missing.is_empty() {
        bail!(
            "{id}@{rev}: the cached snapshot {} is incomplete, missing: {}; {how}",
            snapshot.display(),
            missing.join(", ")
        );
    }
    tracing::info!("{spec} resolved to {}", snapshot.display());
    Ok(snapshot)
}

/// `snapshots/<commit>` for a revision given as a ref name (read from `refs/`) or a commit hash.
fn snapshot_dir(repo_dir: &Path, rev: &str) -> Result<PathBuf> {
    let direct = repo_dir.join("snapshots").join(rev);
    if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) && direct.is_dir() {
        return Ok(direct);
    }
    let ref_path = repo_dir.join("refs").join(rev);
    let commit = std::fs::read_to_string(&ref_path).with_context(|| {
        format!(
            "no revision `{rev}` in the cache ({} unreadable)",
            ref_path.display()
        )
    })?;
    let commit = commit.trim();
    let dir = repo_dir.join("snapshots").join(commit);
    if !dir.is_dir() {
        bail!(
            "{} points to commit {commit} but {} does not exist",
            ref_path.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// Files a loadable snapshot needs that are absent (or dangling links to missing blobs).
fn missing_files(snapshot: &Path) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    if !snapshot.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    let index = snapshot.join(INDEX_FILE);
    if index.is_file() {
        for file in ShardIndex::from_file(&index)?.shard_files() {
            if !snapshot.join(&file).is_file() {
                missing.push(file);
            }
        }
    } else if !snapshot.join(SINGLE_FILE).is_file() {
        missing.push(format!("{INDEX_FILE} or {SINGLE_FILE}"));
    }
    Ok(missing)
}

fn download_hint(id: &str, rev: &str, cache_root: &Path) -> String {
    let revision = if rev == "main" {
        String::new()
    } else {
        format!(" --revision {rev}")
    };
    format!(
        "Fetch the files with \
         `hf download {id}{revision} --exclude 'original/*' 'metal/*'` \
         (older huggingface_hub: `huggingface-cli download {id}{revision}`) into the cache at {} \
         (HF_HUB_CACHE / HF_HOME select it), or pass a local model directory instead",
        cache_root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::parse_repo_id;

    #[test]
    fn repo_ids() {
        assert_eq!(
            parse_repo_id("openai/gpt-oss-120b"),
            Some(("openai/gpt-oss-120b", "main"))
        );
        assert_eq!(
            parse_repo_id("openai/gpt-oss-20b@v1"),
            Some(("openai/gpt-oss-20b", "v1"))
        );
        for bad in [
            "gpt-oss",
            "a/b/c",
            "../x",
            "a/..",
            "./a",
            "a/b@",
            "/abs/path",
        ] {
            assert_eq!(parse_repo_id(bad), None, "{bad}");
        }
    }
}
