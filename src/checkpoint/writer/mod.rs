//! Streaming writer for a sharded safetensors checkpoint + `model.safetensors.index.json`.
//!
//! Usage: [`ShardedWriter::create`] an output directory, optionally [`ShardedWriter::start_shard`]
//! with an explicit file name (to reproduce a base's shard layout), [`ShardedWriter::add_tensor`]
//! (or [`ShardedWriter::add_tensor_with`] to stream a tensor's bytes), add side files
//! ([`ShardedWriter::write_file`], [`ShardedWriter::copy_file`]), then [`ShardedWriter::finish`].
//!
//! Memory stays bounded: each tensor's bytes go straight to a per-shard data file; when a shard
//! closes, its header is written and the data appended to it (`std::io::copy`, in-kernel on
//! Linux). Everything happens in a temporary sibling directory that is renamed into place by
//! `finish`: the output appears complete or not at all, and a writer dropped without `finish`
//! (an error on the way) removes its temporary directory. An existing output is only replaced
//! when [`WriterOptions::overwrite`] is set.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::Dtype;

use super::index::{check_file_name, ShardIndex, INDEX_FILE, SINGLE_FILE};
use super::shard::byte_size;
use super::st_header::{CountingWriter, HeaderItem};

mod direct;
mod shard;
use shard::{rollback, OpenShard};

/// Options of a [`ShardedWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// With automatic shard naming, a new shard starts when adding a tensor would take the current
    /// one past this many data bytes (a single larger tensor gets a shard of its own).
    pub max_shard_bytes: u64,
    /// Replace an existing output directory (only once the new one is complete).
    pub overwrite: bool,
    /// `__metadata__` of every shard header (`{"format": "pt"}` by default, as transformers writes).
    pub metadata: BTreeMap<String, String>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: 5 << 30,
            overwrite: false,
            metadata: BTreeMap::from([("format".to_string(), "pt".to_string())]),
        }
    }
}

/// What [`ShardedWriter::finish`] wrote.
#[derive(Debug, Clone)]
pub struct WriteSummary {
    /// The output directory.
    pub dir: PathBuf,
    /// Shard file names in order.
    pub shards: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data (the index's `total_size`).
    pub data_bytes: u64,
}

/// Writes a sharded safetensors checkpoint atomically; see the module docs.
pub struct ShardedWriter {
    out: PathBuf,
    tmp: PathBuf,
    opts: WriterOptions,
    explicit: Option<bool>,
    current: Option<OpenShard>,
    /// (final name or None, temp file name) of closed shards, in order.
    closed: Vec<(Option<String>, String)>,
    weight_map: Vec<(String, usize)>,
    names: HashSet<String>,
    files: HashSet<String>,
    data_bytes: u64,
    finished: bool,
    poisoned: bool,
}

impl ShardedWriter {
    /// Prepares writing to `out`; fails if `out` exists and `opts.overwrite` is not set.
    pub fn create(out: &Path, opts: WriterOptions) -> Result<Self> {
        if out.exists() && !opts.overwrite {
            bail!(
                "{} already exists; refusing to overwrite it (pass the overwrite option to replace it)",
                out.display()
            );
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let base = out
            .file_name()
            .with_context(|| format!("{} has no final path component", out.display()))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
            opts,
            explicit: None,
            current: None,
            closed: Vec::new(),
            weight_map: Vec::new(),
            names: HashSet::new(),
            files: HashSet::new(),
            data_bytes: 0,
            finished: false,
            poisoned: false,
        })
    }

    /// Closes the current shard and sends the following tensors to `file_name` (explicit naming;
    /// then every shard must be started this way).
    pub fn start_shard(&mut self, file_name: &str) -> Result<()> {
        check_file_name(file_name)?;
        if self.explicit == Some(false) {
            bail!("start_shard({file_name}) after tensors were added with automatic shard naming");
        }
        if file_name == INDEX_FILE || !self.files.insert(file_name.to_string()) {
            bail!("shard file name {file_name} is already used");
        }
        self.explicit = Some(true);
        self.close_current()?;
        self.open_shard(Some(file_name.to_string()))
    }

    /// Adds a tensor to the current shard.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        data: &[u8],
    ) -> Result<()> {
        self.add_tensor_with(name, dtype, shape, |w| {
            w.write_all(data)?;
            Ok(())
        })
    }

    /// Adds a tensor whose bytes `fill` streams into the given writer; the number of bytes written
    /// must equal what `dtype` and `shape` imply.
    pub fn add_tensor_with<F>(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        fill: F,
    ) -> Result<()>
    where
        F: FnOnce(&mut dyn Write) -> Result<()>,
    {
        if self.poisoned {
            bail!("the writer failed earlier and cannot continue");
        }
        if name.is_empty() || name == "__metadata__" {
            bail!("invalid tensor name {name:?}");
        }
        if !self.names.insert(name.to_string()) {
            bail!("tensor `{name}` written twice");
        }
        let size = byte_size(dtype, shape).with_context(|| {
            format!("tensor `{name}`: shape {shape:?} of {dtype:?} is not a whole number of bytes")
        })? as u64;
        if self.explicit.is_none() {
            self.explicit = Some(false);
        }
        let roll = match &self.current {
            None => true,
            Some(s) => {
                self.explicit == Some(false)
                    && s.size > 0
                    && s.size + size > self.opts.max_shard_bytes
            }
        };
        if roll {
            if self.explicit == Some(true) {
                bail!("tensor `{name}` added before start_shard");
            }
            self.close_current()?;
            self.open_shard(None)?;
        }
        let shard_no = self.closed.len();
        let shard = self.current.as_mut().expect("a shard is open");
        if let Some(plan) = &shard.plan {
            match plan.get(shard.items.len()) {
                Some(p) if p.name == name && p.dtype == dtype && p.shape == shape => {}
                Some(p) => bail!(
                    "tensor `{name}` {dtype:?} {shape:?} added where the shard's plan has `{}` {:?} {:?}",
                    p.name,
                    p.dtype,
                    p.shape
                ),
                None => bail!("tensor `{name}` added beyond the shard's plan"),
            }
        }
        let mut counter = CountingWriter {
            inner: &mut shard.data,
            n: 0,
        };
        let filled = fill(&mut counter).with_context(|| format!("writing tensor `{name}`"));
        let written = counter.n;
        let outcome = filled.and_then(|()| {
            if written != size {
                bail!("tensor `{name}`: {written} bytes written, but {dtype:?} {shape:?} needs {size}");
            }
            Ok(())
        });
        if let Err(e) = outcome {
            // Drop the partial bytes so the writer stays consistent (the caller may go on).
            self.names.remove(name);
            if let Err(r) = rollback(shard) {
                self.poisoned = true;
                return Err(e.context(format!("and the shard could not be rolled back: {r}")));
            }
            return Err(e);
        }
        shard.items.push(HeaderItem {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            start: shard.size,
            end: shard.size + size,
        });
        shard.size += size;
        self.data_bytes += size;
        self.weight_map.push((name.to_string(), shard_no));
        Ok(())
    }

    /// Writes a side file (e.g. `config.json`) into the output.
    pub fn write_file(&mut self, file_name: &str, bytes: &[u8]) -> Result<()> {
        self.reserve_file(file_name)?;
        let path = self.tmp.join(file_name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Copies `src` into the output as `file_name`.
    pub fn copy_file(&mut self, src: &Path, file_name: &str) -> Result<()> {
        self.reserve_file(file_name)?;
        let dst = self.tmp.join(file_name);
        std::fs::copy(src, &dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        Ok(())
    }

    /// Closes the last shard, writes the index and moves the output into place.
    pub fn finish(mut self) -> Result<WriteSummary> {
        if self.poisoned {
            bail!("the writer failed earlier; nothing was written");
        }
        self.close_current()?;
        if self.closed.is_empty() {
            bail!("no tensors were written");
        }
        let n = self.closed.len();
        let single = self.explicit == Some(false) && n == 1;
        let mut finals = Vec::with_capacity(n);
        for (i, (name, temp)) in self.closed.iter().enumerate() {
            let fin = match name {
                Some(f) => f.clone(),
                None if single => SINGLE_FILE.to_string(),
                None => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
            };
            if self.files.contains(&fin) && name.is_none() {
                bail!("side file {fin} clashes with a shard name");
            }
            if *temp != fin {
                std::fs::rename(self.tmp.join(temp), self.tmp.join(&fin))
                    .with_context(|| format!("cannot rename shard to {fin}"))?;
            }
            finals.push(fin);
        }
        if !single {
            let index = ShardIndex {
                metadata: BTreeMap::from([(
                    "total_size".to_string(),
                    serde_json::Value::from(self.data_bytes),
                )]),
                weight_map: self
                    .weight_map
                    .iter()
                    .map(|(t, s)| (t.clone(), finals[*s].clone()))
                    .collect(),
            };
            let json = serde_json::to_string_pretty(&index)?;
            std::fs::write(self.tmp.join(INDEX_FILE), json + "\n")
                .with_context(|| format!("cannot write {INDEX_FILE}"))?;
        }
        self.commit()?;
        self.finished = true;
        Ok(WriteSummary {
            dir: self.out.clone(),
            shards: finals,
            tensors: self.weight_map.len(),
            data_bytes: self.data_bytes,
        })
    }

    fn commit(&self) -> Result<()> {
        let old = self.tmp.with_file_name(format!(
            "{}.old",
            self.tmp.file_name().unwrap_or_default().to_string_lossy()
        ));
        let replacing = self.out.exists();
        if replacing {
            if !self.opts.overwrite {
                bail!(
                    "{} appeared while writing; refusing to overwrite it",
                    self.out.display()
                );
            }
            std::fs::rename(&self.out, &old)
                .with_context(|| format!("cannot move the old {} aside", self.out.display()))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
            if replacing {
                let _ = std::fs::rename(&old, &self.out);
            }
            return Err(e)
                .with_context(|| format!("cannot move the output into {}", self.out.display()));
        }
        if replacing {
            let removed = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            removed
                .with_context(|| format!("cannot remove the replaced output {}", old.display()))?;
        }
        Ok(())
    }

    fn reserve_file(&mut self, file_name: &str) -> Result<()> {
        check_file_name(file_name)?;
        if file_name == INDEX_FILE || !self.files.insert(file_name.to_string()) {
            bail!("output file {file_name} is already used");
        }
        Ok(())
    }
}

impl Drop for ShardedWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.current = None;
            if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
                tracing::warn!("cannot remove partial output {}: {e}", self.tmp.display());
            }
        }
    }
}
