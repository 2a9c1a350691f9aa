//! ed25519 keys and signatures over an adapter's provenance sidecar (which holds the SHA-256
//! manifest of every file, so a signature covers the whole directory).
//!
//! Key files are one line of text: the secret key `lora-qat-ed25519-secret <hex seed> <comment>`
//! (mode 0600), the public key `KEY.pub` `ed25519 <hex key> <comment>`. A trusted-keys file is
//! public-key lines (`.pub` files concatenated); blank lines and `#` comments are skipped.
//! Signatures live in `lora_qat_signatures.json`, one entry per signer.

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::provenance::{self, io, write_atomic, Sealed, TrustError, SIGNATURES_FILE};

const SECRET_TAG: &str = "lora-qat-ed25519-secret";
const PUBLIC_TAG: &str = "ed25519";

/// A public key with the comment that names its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// the key
    pub key: VerifyingKey,
    /// who it belongs to (free text)
    pub comment: String,
}

impl PublicKey {
    /// Lowercase hex of the 32 key bytes.
    pub fn hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The `.pub` line: `ed25519 <hex> <comment>`.
    pub fn line(&self) -> String {
        format!("{PUBLIC_TAG} {} {}", self.hex(), self.comment)
            .trim_end()
            .to_string()
    }

    /// Parses a `.pub` line; `what` names it in errors (file and line).
    pub fn parse(line: &str, what: &str) -> Result<Self, String> {
        let mut it = line.trim().splitn(3, char::is_whitespace);
        let (tag, key) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        if tag != PUBLIC_TAG {
            return Err(format!(
                "{what}: expected `{PUBLIC_TAG} <64 hex digits> [comment]` (a lora-qat .pub line), found {:?}",
                truncate(line)
            ));
        }
        let bytes: [u8; 32] = hex::decode(key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{what}: the key is not 64 hex digits"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| format!("{what}: not an ed25519 public key ({e})"))?;
        Ok(PublicKey {
            key,
            comment: it.next().unwrap_or("").trim().to_string(),
        })
    }
}

fn truncate(s: &str) -> String {
    s.trim().chars().take(60).collect()
}

/// A secret key read from a key file.
pub struct SecretKey {
    key: SigningKey,
    /// the comment of the key pair
    pub comment: String,
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(comment: &str) -> Result<Self, TrustError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| TrustError::Signature {
            path: PathBuf::from("<random source>"),
            message: format!("cannot get random bytes for a key: {e}"),
        })?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
            comment: comment.trim().to_string(),
        })
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            comment: self.comment.clone(),
        }
    }

    /// Reads a secret key file written by [`SecretKey::write_pair`].
    pub fn read(path: &Path) -> Result<Self, TrustError> {
        let text = fs::read_to_string(path).map_err(io(path, "reading the key"))?;
        let bad = |m: &str| TrustError::Signature {
            path: path.to_path_buf(),
            message: format!("not a lora-qat secret key: {m}"),
        };
        let mut it = text.trim().splitn(3, char::is_whitespace);
        if it.next() != Some(SECRET_TAG) {
            return Err(bad(&format!(
                "it does not start with `{SECRET_TAG}` (is this the .pub file?)"
            )));
        }
        let seed: [u8; 32] = it
            .next()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the seed is not 64 hex digits"))?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
            comment: it.next().unwrap_or("").trim().to_string(),
        })
    }

    /// Writes the secret key to `path` (mode 0600) and the public key to `path.pub`, each through
    /// a temporary file. Existing files are refused unless `overwrite`.
    pub fn write_pair(&self, path: &Path, overwrite: bool) -> Result<PathBuf, TrustError> {
        let public_path = pub_path(path);
        for p in [path, public_path.as_path()] {
            if p.exists() && !overwrite {
                return Err(TrustError::Exists {
                    path: p.to_path_buf(),
                    message: "pass --overwrite to replace the key pair".into(),
                });
            }
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let (Some(secret_name), Some(public_name)) = (name(path), name(&public_path)) else {
            return Err(TrustError::Malformed {
                path: path.to_path_buf(),
                message: "not a file name".into(),
            });
        };
        let secret = format!(
            "{SECRET_TAG} {} {}\n",
            hex::encode(self.key.to_bytes()),
            self.comment
        );
        write_secret(&dir, &secret_name, secret.as_bytes())?;
        write_atomic(&dir, &public_name, (self.public().line() + "\n").as_bytes())?;
        Ok(public_path)
    }
}

#[cfg(unix)]
fn write_secret(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TrustError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp, "creating"))?;
        f.write_all(bytes).map_err(io(&tmp, "writing"))?;
        f.sync_all().map_err(io(&tmp, "syncing"))?;
        let target = dir.join(name);
        fs::rename(&tmp, &target).map_err(io(&target, "renaming into place"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(not(unix))]
fn write_secret(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TrustError> {
    write_atomic(dir, name, bytes)
}

/// `KEY.pub` for a secret key file `KEY`.
pub fn pub_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Reads a trusted-keys file: public-key lines; blank lines and `#` comments skipped. Errors name
/// the file and line.
pub fn read_trusted(path: &Path) -> Result<Vec<PublicKey>, TrustError> {
    let text = fs::read_to_string(path).map_err(io(path, "reading the trusted keys"))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let what = format!("line {}", i + 1);
        keys.push(
            PublicKey::parse(t, &what).map_err(|message| TrustError::Signature {
                path: path.to_path_buf(),
                message,
            })?,
        );
    }
    if keys.is_empty() {
        return Err(TrustError::Signature {
            path: path.to_path_buf(),
            message: "no public key in the file (expected `ed25519 <hex> [comment]` lines)".into(),
        });
    }
    Ok(keys)
}

/// One signature entry of `lora_qat_signatures.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    /// always `ed25519`
    pub algorithm: String,
    /// hex of the signer's public key
    pub public_key: String,
    /// the signer's comment (who)
    pub comment: String,
    /// hex of the 64-byte signature over the sidecar's bytes
    pub signature: String,
    /// hex SHA-256 of the sidecar signed (for people; the signature is what counts)
    pub provenance_sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SignatureFile {
    signatures: Vec<SignatureEntry>,
}

/// A signature of a sealed directory, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// the entry as stored
    pub entry: SignatureEntry,
    /// whether it verifies against the sidecar's current bytes
    pub valid: bool,
}

fn read_entries(dir: &Path) -> Result<Vec<SignatureEntry>, TrustError> {
    let path = dir.join(SIGNATURES_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = fs::read(&path).map_err(io(&path, "reading"))?;
    let file: SignatureFile =
        serde_json::from_slice(&bytes).map_err(|e| TrustError::Malformed {
            path,
            message: format!("not a lora-qat signatures file: {e}"),
        })?;
    Ok(file.signatures)
}

fn entry_valid(entry: &SignatureEntry, signed: &[u8]) -> bool {
    let key = PublicKey::parse(&format!("{PUBLIC_TAG} {}", entry.public_key), "");
    let sig: Option<[u8; 64]> = hex::decode(&entry.signature)
        .ok()
        .and_then(|b| b.try_into().ok());
    match (key, sig) {
        (Ok(k), Some(s)) => k.key.verify(signed, &Signature::from_bytes(&s)).is_ok(),
        _ => false,
    }
}

/// Every signature of a sealed directory, each checked against the sidecar's bytes.
pub fn signatures(dir: &Path, sealed: &Sealed) -> Result<Vec<SignatureCheck>, TrustError> {
    Ok(read_entries(dir)?
        .into_iter()
        .map(|entry| {
            let valid = entry.algorithm == "ed25519" && entry_valid(&entry, &sealed.bytes);
            SignatureCheck { entry, valid }
        })
        .collect())
}

/// Signs the sealed directory `dir` with `key`: verifies the manifest first (a modified directory
/// is not signed), then adds (or replaces) this key's entry in the signatures file, atomically.
pub fn sign(dir: &Path, key: &SecretKey) -> Result<SignatureEntry, TrustError> {
    let sealed = provenance::verify(dir)?.ok_or_else(|| TrustError::Signature {
        path: dir.to_path_buf(),
        message: format!("no {} to sign", provenance::PROVENANCE_FILE),
    })?;
    let public = key.public();
    let entry = SignatureEntry {
        algorithm: "ed25519".into(),
        public_key: public.hex(),
        comment: public.comment.clone(),
        signature: hex::encode(key.key.sign(&sealed.bytes).to_bytes()),
        provenance_sha256: sealed.digest(),
    };
    let mut entries = read_entries(dir)?;
    entries.retain(|e| e.public_key != entry.public_key);
    entries.push(entry.clone());
    let text = serde_json::to_string_pretty(&SignatureFile {
        signatures: entries,
    })
    .expect("signatures serialize")
        + "\n";
    write_atomic(dir, SIGNATURES_FILE, text.as_bytes())?;
    Ok(entry)
}

/// Requires `dir` to be sealed, intact, and signed by one of `trusted` with a signature that
/// verifies. Returns the trusted signers' entries; errors name what failed (no sidecar, a modified
/// or removed file, no signature, a signature that no longer verifies, only untrusted signers).
pub fn check_trusted(
    dir: &Path,
    trusted: &[PublicKey],
) -> Result<(Sealed, Vec<SignatureEntry>), TrustError> {
    let refuse = |message: String| TrustError::Signature {
        path: dir.to_path_buf(),
        message,
    };
    let sealed = provenance::verify(dir)?.ok_or_else(|| {
        refuse(format!(
            "not signed: no {} (an adapter not sealed by lora-qat; seal and sign it with `lora-qat sign`)",
            provenance::PROVENANCE_FILE
        ))
    })?;
    let checks = signatures(dir, &sealed)?;
    if checks.is_empty() {
        return Err(refuse(format!("not signed: no {SIGNATURES_FILE}")));
    }
    let is_trusted = |e: &SignatureEntry| trusted.iter().any(|k| k.hex() == e.public_key);
    let good: Vec<SignatureEntry> = checks
        .iter()
        .filter(|c| c.valid && is_trusted(&c.entry))
        .map(|c| c.entry.clone())
        .collect();
    if !good.is_empty() {
        return Ok((sealed, good));
    }
    let describe = |c: &SignatureCheck| {
        format!(
            "{} ({}): {}",
            c.entry.public_key,
            if c.entry.comment.is_empty() {
                "no comment"
            } else {
                &c.entry.comment
            },
            match (c.valid, is_trusted(&c.entry)) {
                (false, true) => "trusted key, but the signature does not verify: the provenance changed after signing",
                (false, false) => "untrusted key, and the signature does not verify",
                _ => "valid signature by a key not in --trusted-keys",
            }
        )
    };
    let found: Vec<String> = checks.iter().map(describe).collect();
    Err(refuse(format!(
        "no valid signature by a trusted key; signatures found: {}",
        found.join("; ")
    )))
}
