//! The provenance sidecar of an adapter directory, `lora_qat_provenance.json` (PEFT ignores
//! files it does not know): which base the adapter belongs to (id, revision and a fingerprint of
//! the base's config and safetensors headers), the quantization recipe, the training arguments,
//! the dataset fingerprint, the tool and version, the parts of a combined adapter, and a SHA-256
//! manifest of every file of the directory. Signatures (`lora_qat_signatures.json`, see
//! [`crate::signing`]) are over the sidecar's exact bytes, so they cover all of it.
//!
//! [`seal`] writes the sidecar (computing the manifest); [`verify`] checks a directory against it
//! and reports every modified, truncated or removed file by name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// File name of the provenance sidecar.
pub const PROVENANCE_FILE: &str = "lora_qat_provenance.json";
/// File name of the signatures over the sidecar.
pub const SIGNATURES_FILE: &str = "lora_qat_signatures.json";
/// Version of the sidecar's layout.
pub const FORMAT: u32 = 1;

/// Errors about an adapter directory's provenance, manifest and signatures.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// the file
        path: PathBuf,
        /// what was being done
        action: &'static str,
        /// the cause
        source: std::io::Error,
    },
    /// The sidecar or signature file is not what this tool writes.
    #[error("{}: {message}", path.display())]
    Malformed {
        /// the file
        path: PathBuf,
        /// what is wrong
        message: String,
    },
    /// The directory does not match its manifest.
    #[error("{} does not match its manifest ({PROVENANCE_FILE}): {}; the adapter was modified or truncated after it was sealed", dir.display(), problems.join("; "))]
    Tampered {
        /// the adapter directory
        dir: PathBuf,
        /// one line per file that failed
        problems: Vec<String>,
    },
    /// A signature or key problem (untrusted, invalid, unsigned).
    #[error("{}: {message}", path.display())]
    Signature {
        /// the adapter directory or key file
        path: PathBuf,
        /// what failed
        message: String,
    },
    /// An output exists and may not be replaced.
    #[error("{} already exists; {message}", path.display())]
    Exists {
        /// the path
        path: PathBuf,
        /// what to do
        message: String,
    },
}

pub(crate) fn io<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> TrustError + 'a {
    move |source| TrustError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// lowercase hex SHA-256 of the file's bytes
    pub sha256: String,
    /// length in bytes
    pub bytes: u64,
}

/// The base model an adapter was trained on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// hub id or path as given to training
    pub model_id: Option<String>,
    /// hub revision (commit), when known
    pub revision: Option<String>,
    /// `sha256:` of config.json and every shard's safetensors header (see the root crate's
    /// `Checkpoint::fingerprint`)
    pub fingerprint: Option<String>,
}

/// The content of `lora_qat_provenance.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// layout version ([`FORMAT`])
    pub format: u32,
    /// the tool that wrote the adapter
    pub tool: String,
    /// its version
    pub tool_version: String,
    /// when (RFC 3339, UTC)
    pub created: String,
    /// what wrote it: `train`, `checkpoint`, `combine`, `sign` (sealing a PEFT adapter), ...
    pub origin: String,
    /// the base model
    pub base: BaseRef,
    /// the quantization recipe trained under (null when unknown)
    #[serde(default)]
    pub quantization: Value,
    /// the training arguments (null when not trained here)
    #[serde(default)]
    pub training: Value,
    /// the dataset fingerprint (null when unknown)
    #[serde(default)]
    pub dataset: Value,
    /// for a combined adapter: its parts in order (directory, manifest digest, their provenance)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Value>,
    /// SHA-256 and length of every file of the directory except this sidecar and the
    /// signatures, by file name
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

impl Provenance {
    /// A provenance with the given origin and base, everything else unknown, no files yet.
    pub fn new(tool_version: &str, created: &str, origin: &str, base: BaseRef) -> Self {
        Provenance {
            format: FORMAT,
            tool: "lora-qat".into(),
            tool_version: tool_version.into(),
            created: created.into(),
            origin: origin.into(),
            base,
            quantization: Value::Null,
            training: Value::Null,
            dataset: Value::Null,
            parts: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    /// The sidecar's bytes: pretty JSON, newline-terminated.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).expect("provenance serializes");
        s.push('\n');
        s.into_bytes()
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, TrustError> {
    let mut f = File::open(path).map_err(io(path, "opening"))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path, "reading"))?;
    Ok(hex::encode(h.finalize()))
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files a manifest covers: every regular file directly in `dir` whose name does not start
/// with `.`, except the sidecar and the signatures, sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<String>, TrustError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir, "listing"))? {
        let entry = entry.map_err(io(dir, "listing"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name.starts_with('.') || name == PROVENANCE_FILE || name == SIGNATURES_FILE;
        if !skip && entry.file_type().map_err(io(dir, "listing"))?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Computes the manifest of `dir` (see [`manifest_files`]).
pub fn manifest(dir: &Path) -> Result<BTreeMap<String, FileEntry>, TrustError> {
    let mut files = BTreeMap::new();
    for name in manifest_files(dir)? {
        let path = dir.join(&name);
        let bytes = fs::metadata(&path).map_err(io(&path, "reading"))?.len();
        files.insert(
            name,
            FileEntry {
                sha256: sha256_file(&path)?,
                bytes,
            },
        );
    }
    Ok(files)
}

/// Writes `bytes` to `dir/name` through a temporary file in `dir`, synced, then renamed.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TrustError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let target = dir.join(name);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp, "creating"))?;
        f.write_all(bytes).map_err(io(&tmp, "writing"))?;
        f.sync_all().map_err(io(&tmp, "syncing"))?;
        fs::rename(&tmp, &target).map_err(io(&target, "renaming into place"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Computes the manifest of `dir` into `provenance.files` and writes the sidecar (atomically).
/// Signatures of an earlier sidecar no longer apply and are removed.
pub fn seal(dir: &Path, provenance: &mut Provenance) -> Result<(), TrustError> {
    provenance.files = manifest(dir)?;
    write_atomic(dir, PROVENANCE_FILE, &provenance.to_bytes())?;
    let sigs = dir.join(SIGNATURES_FILE);
    if sigs.exists() {
        fs::remove_file(&sigs).map_err(io(&sigs, "removing stale signatures"))?;
    }
    Ok(())
}

/// A directory whose files match its sidecar.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// the parsed sidecar
    pub provenance: Provenance,
    /// its exact bytes (what signatures are over)
    pub bytes: Vec<u8>,
    /// files in the directory that the manifest does not list (not covered by signatures)
    pub unlisted: Vec<String>,
}

impl Sealed {
    /// SHA-256 of the sidecar's bytes: one digest naming the whole sealed directory.
    pub fn digest(&self) -> String {
        sha256_bytes(&self.bytes)
    }
}

/// Reads and parses `dir`'s sidecar; `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<(Provenance, Vec<u8>)>, TrustError> {
    let path = dir.join(PROVENANCE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).map_err(io(&path, "reading"))?;
    let provenance: Provenance =
        serde_json::from_slice(&bytes).map_err(|e| TrustError::Malformed {
            path: path.clone(),
            message: format!("not a lora-qat provenance file: {e}"),
        })?;
    if provenance.format != FORMAT {
        return Err(TrustError::Malformed {
            path,
            message: format!(
                "format {} (this tool reads format {FORMAT})",
                provenance.format
            ),
        });
    }
    Ok(Some((provenance, bytes)))
}

/// Checks `dir` against its sidecar: every listed file present, of the listed length and SHA-256.
/// `Ok(None)` when the directory has no sidecar (an adapter made by PEFT); an error listing every
/// file that is missing, truncated or modified otherwise.
pub fn verify(dir: &Path) -> Result<Option<Sealed>, TrustError> {
    let Some((provenance, bytes)) = read(dir)? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    for (name, want) in &provenance.files {
        if name.contains(['/', '\\']) || name.starts_with('.') || name.is_empty() {
            problems.push(format!("{name:?}: not a file name of this directory"));
            continue;
        }
        let path = dir.join(name);
        let Ok(meta) = fs::metadata(&path) else {
            problems.push(format!("{name}: removed"));
            continue;
        };
        if meta.len() != want.bytes {
            problems.push(format!(
                "{name}: {} bytes, manifest says {} (truncated or replaced)",
                meta.len(),
                want.bytes
            ));
            continue;
        }
        let got = sha256_file(&path)?;
        if got != want.sha256 {
            problems.push(format!(
                "{name}: SHA-256 {got}, manifest says {} (modified)",
                want.sha256
            ));
        }
    }
    if !problems.is_empty() {
        return Err(TrustError::Tampered {
            dir: dir.to_path_buf(),
            problems,
        });
    }
    let unlisted = manifest_files(dir)?
        .into_iter()
        .filter(|n| !provenance.files.contains_key(n))
        .collect();
    Ok(Some(Sealed {
        provenance,
        bytes,
        unlisted,
    }))
}
