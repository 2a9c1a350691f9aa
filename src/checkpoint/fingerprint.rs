//! The base fingerprint adapters carry in their provenance: SHA-256 over `config.json` and every
//! shard's safetensors header (the 8-byte length and the JSON), shards in name order. Cheap (no
//! tensor data is read) and it changes with the architecture, any tensor's name, dtype, shape or
//! placement, or the header metadata. It does not see tensor values: a checkpoint rewritten with
//! the same layout (an export of this base) has the same fingerprint.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::Checkpoint;

impl Checkpoint {
    /// `sha256:<hex>` of config.json and the shard headers (see the module docs).
    pub fn fingerprint(&self) -> Result<String> {
        let config = self.dir.join("config.json");
        let bytes =
            std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?;
        let mut h = Sha256::new();
        h.update(b"config.json\0");
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
        let mut shards: Vec<_> = self.shards.iter().collect();
        shards.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        for s in shards {
            let n = u64::from_le_bytes(s.mmap[..8].try_into().expect("8 bytes")) as usize;
            let header = &s.mmap[..8 + n];
            h.update(s.file_name.as_bytes());
            h.update(b"\0");
            h.update((header.len() as u64).to_le_bytes());
            h.update(header);
        }
        Ok(format!("sha256:{:x}", h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn copy_dir(from: &Path, to: &Path) {
        for f in std::fs::read_dir(from).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }

    #[test]
    fn fingerprint_sees_config_and_headers_not_values() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base");
        let fp = Checkpoint::open(&fixture).unwrap().fingerprint().unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        let t = tempfile::tempdir().unwrap();
        copy_dir(&fixture, t.path());
        assert_eq!(
            Checkpoint::open(t.path()).unwrap().fingerprint().unwrap(),
            fp
        );
        // a value changed (last byte of a shard's data): same fingerprint
        let shard = t.path().join("model-00001-of-00001.safetensors");
        let mut b = std::fs::read(&shard).unwrap();
        let n = b.len() - 1;
        b[n] ^= 1;
        std::fs::write(&shard, &b).unwrap();
        assert_eq!(
            Checkpoint::open(t.path()).unwrap().fingerprint().unwrap(),
            fp
        );
        // the config changed: another fingerprint
        let cfg = t.path().join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, text.replacen('{', "{\"_note\": 1, ", 1)).unwrap();
        assert_ne!(
            Checkpoint::open(t.path()).unwrap().fingerprint().unwrap(),
            fp
        );
    }
}
