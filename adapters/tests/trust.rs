//! Provenance sidecar, manifest and signatures on a copy of the fixture adapter: intact directories
//! verify; a flipped byte, a truncated or removed file, an edited config, a sidecar edited after
//! signing, a wrong key and an untrusted key are each refused, naming what failed.

use std::fs;
use std::path::{Path, PathBuf};

use adapters::provenance::{self, BaseRef, Provenance, TrustError, PROVENANCE_FILE};
use adapters::signing::{self, PublicKey, SecretKey};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt-oss/adapter")
}

/// A sealed copy of the fixture adapter in a temp dir.
fn sealed_copy() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for f in fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), t.path().join(f.file_name())).unwrap();
    }
    let base = BaseRef {
        model_id: Some("tiny-gpt-oss".into()),
        revision: None,
        fingerprint: Some("sha256:00".into()),
    };
    let mut p = Provenance::new("0.1.0", "2026-12-03T00:00:00Z", "test", base);
    provenance::seal(t.path(), &mut p).unwrap();
    t
}

fn tampered(dir: &Path) -> String {
    match provenance::verify(dir) {
        Err(e @ TrustError::Tampered { .. }) => e.to_string(),
        other => panic!("expected Tampered, got {other:?}"),
    }
}

#[test]
fn intact_directory_verifies_and_lists_every_file() {
    let t = sealed_copy();
    let s = provenance::verify(t.path()).unwrap().expect("sealed");
    let names: Vec<&str> = s.provenance.files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors"
        ]
    );
    let st = &s.provenance.files["adapter_model.safetensors"];
    let bytes = fs::read(t.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(st.bytes, bytes.len() as u64);
    assert_eq!(st.sha256, provenance::sha256_bytes(&bytes));
    assert!(s.unlisted.is_empty());
    fs::write(t.path().join("notes.txt"), "x").unwrap();
    let s = provenance::verify(t.path()).unwrap().unwrap();
    assert_eq!(s.unlisted, ["notes.txt"]);
}

#[test]
fn unsealed_directory_is_none() {
    assert!(provenance::verify(&fixture()).unwrap().is_none());
}

#[test]
fn flipped_byte_is_named() {
    let t = sealed_copy();
    let p = t.path().join("adapter_model.safetensors");
    let mut b = fs::read(&p).unwrap();
    let n = b.len() - 5;
    b[n] ^= 1;
    fs::write(&p, b).unwrap();
    let msg = tampered(t.path());
    assert!(
        msg.contains("adapter_model.safetensors: SHA-256") && msg.contains("(modified)"),
        "{msg}"
    );
}

#[test]
fn truncation_and_removal_are_named() {
    let t = sealed_copy();
    let p = t.path().join("adapter_model.safetensors");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 100]).unwrap();
    fs::remove_file(t.path().join("README.md")).unwrap();
    let msg = tampered(t.path());
    assert!(msg.contains("README.md: removed"), "{msg}");
    assert!(
        msg.contains("adapter_model.safetensors:") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn edited_config_is_named() {
    let t = sealed_copy();
    let p = t.path().join("adapter_config.json");
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace("\"r\": 4", "\"r\": 5");
    fs::write(&p, text).unwrap();
    let msg = tampered(t.path());
    assert!(msg.contains("adapter_config.json"), "{msg}");
}

#[test]
fn malformed_sidecar_is_refused() {
    let t = sealed_copy();
    fs::write(t.path().join(PROVENANCE_FILE), "{\"format\": 1}").unwrap();
    let e = provenance::verify(t.path()).unwrap_err();
    assert!(matches!(e, TrustError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains(PROVENANCE_FILE), "{e}");
}

fn keypair(dir: &Path, name: &str) -> (SecretKey, PublicKey) {
    let k = SecretKey::generate(name).unwrap();
    let path = dir.join(name);
    let pub_path = k.write_pair(&path, false).unwrap();
    let read = SecretKey::read(&path).unwrap();
    let public = PublicKey::parse(fs::read_to_string(pub_path).unwrap().trim(), "pub").unwrap();
    assert_eq!(read.public(), public);
    (read, public)
}

#[test]
fn good_signature_is_accepted() {
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = keypair(keys.path(), "alice@lab");
    let t = sealed_copy();
    signing::sign(t.path(), &alice).unwrap();
    let (_, who) = signing::check_trusted(t.path(), &[alice_pub]).unwrap();
    assert_eq!(who.len(), 1);
    assert_eq!(who[0].comment, "alice@lab");
}

#[test]
fn wrong_key_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (_, alice_pub) = keypair(keys.path(), "alice");
    let (mallory, _) = keypair(keys.path(), "mallory");
    let t = sealed_copy();
    signing::sign(t.path(), &mallory).unwrap();
    let e = signing::check_trusted(t.path(), &[alice_pub]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("mallory") && msg.contains("not in --trusted-keys"),
        "{msg}"
    );
}

#[test]
fn modified_after_signing_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_pub) = keypair(keys.path(), "alice");
    // a weight changed: the manifest check fails before any signature is looked at
    let t = sealed_copy();
    signing::sign(t.path(), &alice).unwrap();
    let p = t.path().join("adapter_model.safetensors");
    let mut b = fs::read(&p).unwrap();
    let n = b.len() - 1;
    b[n] ^= 0x80;
    fs::write(&p, &b).unwrap();
    let e = signing::check_trusted(t.path(), std::slice::from_ref(&alice_pub)).unwrap_err();
    assert!(matches!(e, TrustError::Tampered { .. }), "{e}");
    // the weight changed and the manifest rewritten to match: the signature no longer verifies
    let side = t.path().join(PROVENANCE_FILE);
    let mut prov: Provenance = serde_json::from_slice(&fs::read(&side).unwrap()).unwrap();
    prov.files
        .get_mut("adapter_model.safetensors")
        .unwrap()
        .sha256 = provenance::sha256_bytes(&b);
    fs::write(&side, prov.to_bytes()).unwrap();
    assert!(provenance::verify(t.path()).unwrap().is_some());
    let msg = signing::check_trusted(t.path(), &[alice_pub])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not verify"), "{msg}");
}

#[test]
fn unsigned_and_unsealed_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (_, alice_pub) = keypair(keys.path(), "alice");
    let t = sealed_copy();
    let msg = signing::check_trusted(t.path(), std::slice::from_ref(&alice_pub))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not signed"), "{msg}");
    let msg = signing::check_trusted(&fixture(), &[alice_pub])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not signed") && msg.contains(PROVENANCE_FILE),
        "{msg}"
    );
}

#[test]
fn resealing_drops_old_signatures() {
    let keys = tempfile::tempdir().unwrap();
    let (alice, _) = keypair(keys.path(), "alice");
    let t = sealed_copy();
    signing::sign(t.path(), &alice).unwrap();
    let mut p = provenance::read(t.path()).unwrap().unwrap().0;
    provenance::seal(t.path(), &mut p).unwrap();
    assert!(!t.path().join(provenance::SIGNATURES_FILE).exists());
}

#[test]
fn key_files_and_trusted_keys() {
    let keys = tempfile::tempdir().unwrap();
    let (_, a) = keypair(keys.path(), "a");
    let (_, b) = keypair(keys.path(), "b");
    // existing key files are not overwritten
    let k = SecretKey::generate("c").unwrap();
    let e = k.write_pair(&keys.path().join("a"), false).unwrap_err();
    assert!(matches!(e, TrustError::Exists { .. }), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(keys.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let file = keys.path().join("trusted");
    fs::write(&file, format!("# team\n{}\n\n{}\n", a.line(), b.line())).unwrap();
    assert_eq!(signing::read_trusted(&file).unwrap(), vec![a.clone(), b]);
    fs::write(&file, format!("{}\ned25519 zz\n", a.line())).unwrap();
    let msg = signing::read_trusted(&file).unwrap_err().to_string();
    assert!(msg.contains("line 2") && msg.contains("64 hex"), "{msg}");
    // a secret key is not a public key, and vice versa
    let msg = SecretKey::read(&signing::pub_path(&keys.path().join("a")))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains(".pub"), "{msg}");
}
