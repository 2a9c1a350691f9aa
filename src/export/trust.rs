//! What merge-export and verify check about each adapter before touching the base: its files
//! against the provenance manifest (a modified, truncated or removed file is refused), its base
//! fingerprint against the base given (refused unless `--allow-base-mismatch`), and with
//! `--trusted-keys` a valid signature by one of those keys. Adapters without provenance (made by
//! PEFT) are accepted with a note, unless signatures are required.

use std::path::{Path, PathBuf};

use adapters::provenance::{self, Sealed};
use adapters::signing::{self, PublicKey, SignatureEntry};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// What to require of the adapters.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// Merge an adapter whose provenance names another base fingerprint.
    pub allow_base_mismatch: bool,
    /// Require a valid signature by one of these keys (`--trusted-keys`).
    pub trusted_keys: Option<Vec<PublicKey>>,
}

impl TrustPolicy {
    /// The policy of `--allow-base-mismatch` and `--trusted-keys FILE`.
    pub fn from_args(allow_base_mismatch: bool, trusted_keys: Option<&Path>) -> Result<Self> {
        let trusted_keys = match trusted_keys {
            Some(p) => Some(signing::read_trusted(p).context("--trusted-keys")?),
            None => None,
        };
        Ok(Self {
            allow_base_mismatch,
            trusted_keys,
        })
    }
}

/// What was established about one adapter.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The adapter directory.
    pub dir: PathBuf,
    /// Its verified provenance, if it has one.
    pub sealed: Option<Sealed>,
    /// Trusted signers whose signatures verified (with `--trusted-keys`).
    pub signers: Vec<SignatureEntry>,
    /// The base fingerprint differs and `--allow-base-mismatch` let it through.
    pub base_mismatch: bool,
}

impl Trust {
    /// What the export's provenance records of this adapter.
    pub fn record(&self) -> Value {
        match &self.sealed {
            None => json!({ "provenance": null }),
            Some(s) => json!({
                "provenance_sha256": s.digest(),
                "origin": s.provenance.origin,
                "base": s.provenance.base,
                "quantization": s.provenance.quantization,
                "dataset": s.provenance.dataset,
                "tool_version": s.provenance.tool_version,
                "created": s.provenance.created,
                "parts": s.provenance.parts.len(),
                "signed_by": self.signers.iter().map(|e| json!({"public_key": e.public_key, "comment": e.comment})).collect::<Vec<_>>(),
                "base_mismatch_allowed": self.base_mismatch,
            }),
        }
    }
}

/// Checks the adapter `dir` against `policy` and the base's fingerprint.
pub fn check(dir: &Path, base_fingerprint: &str, policy: &TrustPolicy) -> Result<Trust> {
    let (sealed, signers) = match &policy.trusted_keys {
        Some(keys) => {
            let (s, who) = signing::check_trusted(dir, keys).with_context(|| {
                format!("the adapter {} is refused (--trusted-keys)", dir.display())
            })?;
            (Some(s), who)
        }
        None => {
            let s = provenance::verify(dir)
                .with_context(|| format!("the adapter {} is refused", dir.display()))?;
            (s, Vec::new())
        }
    };
    let mut base_mismatch = false;
    match &sealed {
        None => tracing::info!(
            "{}: no {} (an adapter made outside lora-qat, e.g. by PEFT): its files and its base \
             cannot be checked; shapes are checked against the base",
            dir.display(),
            provenance::PROVENANCE_FILE
        ),
        Some(s) => {
            if let Some(fp) = &s.provenance.base.fingerprint {
                if fp != base_fingerprint {
                    if !policy.allow_base_mismatch {
                        bail!(
                            "the adapter {} was trained on another base: its provenance names base {} \
                             with fingerprint {fp}, the base given has {base_fingerprint} (config.json \
                             or the safetensors headers differ); pass --allow-base-mismatch to merge it anyway",
                            dir.display(),
                            s.provenance.base.model_id.as_deref().unwrap_or("?"),
                        );
                    }
                    tracing::warn!(
                        "{}: base fingerprint {fp} differs from the base's {base_fingerprint} (--allow-base-mismatch)",
                        dir.display()
                    );
                    base_mismatch = true;
                }
            }
            for f in &s.unlisted {
                tracing::warn!(
                    "{}: {f} is not covered by the manifest (added after sealing)",
                    dir.display()
                );
            }
        }
    }
    Ok(Trust {
        dir: dir.to_path_buf(),
        sealed,
        signers,
        base_mismatch,
    })
}
