//! Downloading a hub checkpoint into the local Hugging Face cache when it is missing there
//! (hf-hub's blocking client; the cache layout `resolve_in_cache` reads). Offline
//! (`HF_HUB_OFFLINE=1`) nothing is tried; otherwise the endpoint must answer a TCP connection within
//! a few seconds, so a machine without network gets a clear error at once instead of a long hang.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use super::hub::parse_repo_id;
use super::index::{ShardIndex, INDEX_FILE, SINGLE_FILE};

/// How long the endpoint may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Files fetched besides the weights when the repo has them.
const OPTIONAL: [&str; 5] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) asks for no network.
pub fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|v| {
        std::env::var(v)
            .map(|x| {
                matches!(
                    x.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    })
}

/// The endpoint (`HF_ENDPOINT`, default https://huggingface.co).
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// `host:port` of an `http(s)://host[:port][/...]` URL.
fn host_port(url: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("HF_ENDPOINT {url:?}: not a URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!("HF_ENDPOINT {url:?}: no host");
    }
    if host.contains(':') {
        return Ok(host.to_string());
    }
    Ok(format!(
        "{host}:{}",
        if scheme == "http" { 80 } else { 443 }
    ))
}

/// Fails within [`CONNECT_TIMEOUT`] when the endpoint does not accept a connection.
pub fn check_reachable(url: &str) -> Result<()> {
    let target = host_port(url)?;
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target} (no network?)"))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => bail!(
            "cannot reach {url} within {} s: {e}",
            CONNECT_TIMEOUT.as_secs()
        ),
        None => bail!("{target} resolves to no address"),
    }
}

/// Downloads the config, the weights (index + shards, or the single file) and the tokenizer and
/// template files of `spec` into `cache_root`; returns the snapshot directory.
pub fn download(spec: &str, cache_root: &Path) -> Result<PathBuf> {
    let Some((id, rev)) = parse_repo_id(spec) else {
        bail!("{spec} is not a hub repo id of the form `org/name[@revision]`");
    };
    let url = endpoint();
    check_reachable(&url)?;
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache_root.to_path_buf())
        .with_endpoint(url.clone())
        .with_progress(true)
        .build()
        .context("cannot start the hub client")?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        rev.to_string(),
    ));
    tracing::info!(
        "downloading {id}@{rev} from {url} into {}",
        cache_root.display()
    );
    let config = repo
        .get("config.json")
        .with_context(|| format!("{id}@{rev}: config.json"))?;
    let snapshot = config
        .parent()
        .context("downloaded file has no directory")?
        .to_path_buf();
    match repo.get(INDEX_FILE) {
        Ok(index) => {
            for shard in ShardIndex::from_file(&index)?.shard_files() {
                repo.get(&shard)
                    .with_context(|| format!("{id}@{rev}: {shard}"))?;
            }
        }
        Err(_) => {
            repo.get(SINGLE_FILE)
                .with_context(|| format!("{id}@{rev}: neither {INDEX_FILE} nor {SINGLE_FILE}"))?;
        }
    }
    for f in OPTIONAL {
        if let Err(e) = repo.get(f) {
            tracing::debug!("{id}@{rev}: no {f} ({e})");
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_ports() {
        assert_eq!(
            host_port("https://huggingface.co").unwrap(),
            "huggingface.co:443"
        );
        assert_eq!(host_port("http://127.0.0.1:9/x").unwrap(), "127.0.0.1:9");
        assert_eq!(host_port("http://mirror").unwrap(), "mirror:80");
        assert!(host_port("huggingface.co").is_err());
    }

    #[test]
    fn a_closed_port_fails_at_once() {
        let t = std::time::Instant::now();
        // port 1 on loopback: nothing listens, the connection is refused
        assert!(check_reachable("http://127.0.0.1:1").is_err());
        assert!(t.elapsed() < CONNECT_TIMEOUT);
    }
}
