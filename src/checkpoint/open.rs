//! Opening a Hugging Face model directory: config, shard index, memory-mapped shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use safetensors::Dtype;

use super::config::GptOssConfig;
use super::index::{ShardIndex, INDEX_FILE, SINGLE_FILE};
use super::shard::Shard;
use super::validate;

/// Where one tensor lives: shard number and absolute byte range in that shard's map.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// An opened, validated gpt-oss checkpoint in the release format. Tensor data is read straight
/// from the memory maps (never copied into memory as a whole); `Send + Sync`.
pub struct Checkpoint {
    pub(crate) dir: PathBuf,
    pub(crate) config: GptOssConfig,
    pub(crate) shards: Vec<Shard>,
    pub(crate) tensors: BTreeMap<String, Entry>,
    pub(crate) index: Option<ShardIndex>,
    pub(crate) unexpected: Vec<String>,
}

impl Checkpoint {
    /// Opens `dir` (config.json + `model.safetensors` or shards + index), maps the shards and
    /// validates headers, index consistency, and every tensor's name, dtype and shape against
    /// the config. Unexpected extra tensors are logged and listed by [`Checkpoint::unexpected_tensors`].
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "{} is not a directory (expected a Hugging Face model directory)",
                dir.display()
            );
        }
        let config = GptOssConfig::from_file(&dir.join("config.json"))?;
        let index_path = dir.join(INDEX_FILE);
        let (index, files) = if index_path.is_file() {
            let index = ShardIndex::from_file(&index_path)?;
            let files = index.shard_files();
            if files.is_empty() {
                bail!("{}: weight_map is empty", index_path.display());
            }
            (Some(index), files)
        } else if dir.join(SINGLE_FILE).is_file() {
            (None, vec![SINGLE_FILE.to_string()])
        } else {
            bail!(
                "{}: neither {INDEX_FILE} nor {SINGLE_FILE} found: not a safetensors checkpoint",
                dir.display()
            );
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        for file in &files {
            let path = dir.join(file);
            if !path.is_file() {
                let example = index
                    .as_ref()
                    .and_then(|ix| ix.weight_map.iter().find(|(_, f)| *f == file))
                    .map(|(t, _)| format!(" (e.g. tensor `{t}`)"))
                    .unwrap_or_default();
                bail!(
                    "{}: shard {file} is named in the index{example} but {} is missing",
                    index_path.display(),
                    path.display()
                );
            }
            let (shard, entries) = Shard::open(&path)?;
            let shard_no = shards.len();
            for h in entries {
                if let Some(prev) = tensors.get(&h.name) {
                    bail!(
                        "tensor `{}` is in two shards: {} and {}",
                        h.name,
                        shards_path(&shards, prev.shard, &shard).display(),
                        path.display()
                    );
                }
                if let Some(ix) = &index {
                    match ix.weight_map.get(&h.name) {
                        Some(f) if f == file => {}
                        Some(f) => bail!(
                            "tensor `{}` is in {} but {} maps it to {f}",
                            h.name,
                            path.display(),
                            index_path.display()
                        ),
                        None => bail!(
                            "tensor `{}` is in {} but missing from {}",
                            h.name,
                            path.display(),
                            index_path.display()
                        ),
                    }
                }
                let entry = Entry {
                    shard: shard_no,
                    dtype: h.dtype,
                    shape: h.shape,
                    start: h.start,
                    end: h.end,
                };
                tensors.insert(h.name, entry);
            }
            shards.push(shard);
        }
        if let Some(ix) = &index {
            for (name, file) in &ix.weight_map {
                if !tensors.contains_key(name) {
                    bail!(
                        "{} maps tensor `{name}` to {file}, but {} has no such tensor",
                        index_path.display(),
                        dir.join(file).display()
                    );
                }
            }
            let data: u64 = tensors.values().map(|e| (e.end - e.start) as u64).sum();
            if let Some(total) = ix.total_size() {
                if total != data {
                    tracing::warn!(
                        "{}: metadata.total_size is {total} but the shards hold {data} bytes of tensor data",
                        index_path.display()
                    );
                }
            }
        }
        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
            index,
            unexpected: Vec::new(),
        };
        ckpt.unexpected = validate::check_against_config(&ckpt)?;
        for name in &ckpt.unexpected {
            tracing::warn!(
                "{}: unexpected tensor `{name}` (not part of the gpt-oss release format)",
                ckpt.dir.display()
            );
        }
        tracing::debug!(
            "opened {} ({} tensors in {} shard(s))",
            ckpt.dir.display(),
            ckpt.tensors.len(),
            ckpt.shards.len()
        );
        Ok(ckpt)
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &GptOssConfig {
        &self.config
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Tensors present that the release format does not have (reported, not fatal).
    pub fn unexpected_tensors(&self) -> &[String] {
        &self.unexpected
    }

    /// Shard files in order, with their size in bytes.
    pub fn shard_files(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.shards.iter().map(|s| (s.path.as_path(), s.len))
    }

    /// Whether the checkpoint came with a shard index (else a single `model.safetensors`).
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// The `__metadata__` of the shard holding `name` (e.g. `format: pt`).
    pub fn shard_metadata(&self, name: &str) -> Option<&[(String, String)]> {
        self.tensors
            .get(name)
            .map(|e| self.shards[e.shard].metadata.as_slice())
    }

    /// Name of the shard file holding `name`.
    pub fn shard_file_of(&self, name: &str) -> Option<&str> {
        self.tensors
            .get(name)
            .map(|e| self.shards[e.shard].file_name.as_str())
    }
}

fn shards_path<'a>(shards: &'a [Shard], i: usize, current: &'a Shard) -> &'a Path {
    shards
        .get(i)
        .map_or(current.path.as_path(), |s| s.path.as_path())
}
