//! Shareable adapters end to end (the binary): `train` seals its adapter and checkpoints with the
//! provenance (base fingerprint, recipe, arguments, data fingerprint, file manifest); `inspect`
//! of the trained adapter against its base reports full coverage; `keygen`/`sign` and
//! `merge-export --trusted-keys` accept a good signature and refuse a wrong key or a change made
//! after signing; tampering (a flipped byte, a removed file, an edited config) and a wrong base
//! are refused by `merge-export` and `inspect`, naming what failed; PEFT adapters are accepted
//! with a note.

mod cli_support;

use std::fs;
use std::path::{Path, PathBuf};

use adapters::provenance::{self, PROVENANCE_FILE, SIGNATURES_FILE};
use cli_support::{bin, copy_dir, err, ok, s, tiny, train_tiny};

fn base() -> PathBuf {
    tiny().join("base")
}

fn export(adapter: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let b = base();
    let mut a = vec![
        "merge-export",
        "--base-path",
        s(&b),
        "--lora-path",
        s(adapter),
        "--output-path",
        s(out),
    ];
    a.extend(extra);
    bin(&a)
}

fn inspect(adapter: &Path, base: Option<&Path>) -> std::process::Output {
    let mut a = vec!["inspect", s(adapter)];
    if let Some(b) = base {
        a.extend(["--base", s(b)]);
    }
    bin(&a)
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    ok(&bin(&["keygen", "--out", s(&key), "--comment", name]));
    key
}

fn sidecar(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join(PROVENANCE_FILE)).unwrap()).unwrap()
}

/// One short run shared by the tests below (each copies it before changing anything).
fn trained() -> &'static Path {
    static RUN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, run) = RUN.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let run = train_tiny(t.path(), 4, &["--save-steps", "2"]);
        (t, run)
    });
    run
}

fn copy_of_trained(t: &Path) -> PathBuf {
    let dir = t.join("adapter");
    copy_dir(trained(), &dir);
    dir
}

#[test]
fn train_seals_its_adapter_and_checkpoints() {
    let run = trained();
    let fp = sidecar(run)["base"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    // the fingerprint is computed here from the base's config.json and shard headers (as the
    // provenance documents it), independently of lora-qat's reader
    let mut names: Vec<String> = fs::read_dir(base())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let cfg = fs::read(base().join("config.json")).unwrap();
    h.update(b"config.json\0");
    h.update((cfg.len() as u64).to_le_bytes());
    h.update(&cfg);
    for n in &names {
        let b = fs::read(base().join(n)).unwrap();
        let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        h.update(n.as_bytes());
        h.update(b"\0");
        h.update(((8 + len) as u64).to_le_bytes());
        h.update(&b[..8 + len]);
    }
    assert_eq!(fp, format!("sha256:{:x}", h.finalize()));
    let p = sidecar(run);
    assert_eq!(p["origin"], "train");
    assert_eq!(p["quantization"]["quant_cfg"], "MXFP4_MLP_WEIGHT_ONLY_CFG");
    assert_eq!(p["training"]["lora_r"], 4);
    assert_eq!(p["training"]["global_step"], 4);
    let data = &p["dataset"]["train"];
    assert_eq!(data["sha256"].as_str().unwrap().len(), 64);
    assert!(data["sequences"].as_u64().unwrap() > 0);
    let files: Vec<&str> = p["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        files,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors"
        ]
    );
    assert!(provenance::verify(run).unwrap().is_some());
    for step in [2, 4] {
        let ck = run.join(format!("checkpoint-{step}"));
        let c = sidecar(&ck);
        assert_eq!(c["origin"], "checkpoint");
        assert_eq!(c["training"]["global_step"], step);
        assert_eq!(c["base"]["fingerprint"].as_str().unwrap(), fp);
        assert!(c["files"].get("optimizer.safetensors").is_some(), "{c}");
        assert!(provenance::verify(&ck).unwrap().is_some());
    }
    let card = fs::read_to_string(run.join("README.md")).unwrap();
    for want in ["library_name: peft", "merge-export", "vllm serve", &fp] {
        assert!(card.contains(want), "model card lacks {want}");
    }
}

#[test]
fn inspect_of_a_trained_adapter_reports_full_coverage() {
    let run = trained();
    let out = ok(&inspect(run, Some(&base())));
    assert!(out.contains("24 of 24 modules adapted"), "{out}");
    assert!(out.contains("[match]"), "{out}");
    assert!(out.contains("sealed, every file matches"), "{out}");
    assert!(out.contains("verdict: ok"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&ok(&bin(&[
        "inspect",
        s(run),
        "--base",
        s(&base()),
        "--json",
    ])))
    .unwrap();
    assert_eq!(j["modules"].as_array().unwrap().len(), 24);
    assert_eq!(j["base"]["fingerprint_status"], "match");
    assert!(j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["finite"] == true && t["l2"].as_f64().unwrap() > 0.0));
}

#[test]
fn tampering_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    type Edit = fn(&Path);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "flipped byte",
            |d| {
                let p = d.join("adapter_model.safetensors");
                let mut b = fs::read(&p).unwrap();
                let n = b.len() - 3;
                b[n] ^= 0x01;
                fs::write(&p, b).unwrap();
            },
            "adapter_model.safetensors: SHA-256",
        ),
        (
            "removed file",
            |d| fs::remove_file(d.join("README.md")).unwrap(),
            "README.md: removed",
        ),
        (
            "edited config",
            |d| {
                let p = d.join("adapter_config.json");
                let text = fs::read_to_string(&p).unwrap();
                fs::write(&p, text.replace("\"lora_alpha\": 8", "\"lora_alpha\": 16")).unwrap();
            },
            "adapter_config.json:",
        ),
    ];
    for (i, (what, edit, named)) in cases.into_iter().enumerate() {
        let dir = t.path().join(format!("case{i}"));
        copy_dir(trained(), &dir);
        edit(&dir);
        let out = dir.join("export");
        let e = err(&export(&dir, &out, &[]));
        assert!(e.contains(named) && e.contains("manifest"), "{what}: {e}");
        assert!(!out.exists(), "{what}: output written");
        let o = inspect(&dir, None);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "{what}: inspect succeeded");
        assert!(
            text.contains("TAMPERED") && text.contains(named),
            "{what}: {text}"
        );
    }
}

#[test]
fn wrong_base_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let other = t.path().join("other-base");
    copy_dir(&base(), &other);
    // another base: same shapes, another config (so another fingerprint)
    let cfg = other.join("config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replacen('{', "{\n  \"_finetuned_from\": \"elsewhere\",", 1),
    )
    .unwrap();
    let b = other.display().to_string();
    let out = t.path().join("export");
    let e = err(&bin(&[
        "merge-export",
        "--base-path",
        &b,
        "--lora-path",
        s(trained()),
        "--output-path",
        s(&out),
    ]));
    assert!(
        e.contains("another base") && e.contains("--allow-base-mismatch"),
        "{e}"
    );
    assert!(!out.exists());
    let o = inspect(trained(), Some(&other));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("[mismatch]"));
    ok(&bin(&[
        "merge-export",
        "--base-path",
        &b,
        "--lora-path",
        s(trained()),
        "--output-path",
        s(&out),
        "--allow-base-mismatch",
    ]));
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("lora_qat_export.json")).unwrap()).unwrap();
    assert_eq!(
        record["adapters"][0]["adapter_provenance"]["base_mismatch_allowed"],
        true
    );
}

#[test]
fn signatures_good_wrong_key_and_modified_after_signing() {
    let t = tempfile::tempdir().unwrap();
    let alice = keygen(t.path(), "alice");
    let mallory = keygen(t.path(), "mallory");
    let pub_of = |k: &Path| PathBuf::from(format!("{}.pub", k.display()));
    let trusted = t.path().join("trusted_keys");
    fs::write(&trusted, fs::read(pub_of(&alice)).unwrap()).unwrap();
    let tk = ["--trusted-keys", s(&trusted)];

    // good: signed by alice
    let good = copy_of_trained(t.path());
    ok(&bin(&["sign", s(&good), "--key", s(&alice)]));
    let out = ok(&inspect(&good, None));
    assert!(out.contains("signed by:") && out.contains("alice"), "{out}");
    let exp = t.path().join("exp-good");
    ok(&export(&good, &exp, &tk));
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(exp.join("lora_qat_export.json")).unwrap()).unwrap();
    assert_eq!(
        record["adapters"][0]["adapter_provenance"]["signed_by"][0]["comment"],
        "alice"
    );

    // wrong key: signed by mallory only
    let wrong = t.path().join("wrong");
    copy_dir(trained(), &wrong);
    ok(&bin(&["sign", s(&wrong), "--key", s(&mallory)]));
    let exp = t.path().join("exp-wrong");
    let e = err(&export(&wrong, &exp, &tk));
    assert!(
        e.contains("mallory") && e.contains("not in --trusted-keys"),
        "{e}"
    );
    assert!(!exp.exists());

    // modified after signing: weights changed and the manifest rewritten to match them
    let modified = t.path().join("modified");
    copy_dir(&good, &modified);
    let w = modified.join("adapter_model.safetensors");
    let mut b = fs::read(&w).unwrap();
    let n = b.len() - 7;
    b[n] ^= 0x10;
    fs::write(&w, &b).unwrap();
    let e = err(&export(&modified, &t.path().join("exp-mod"), &tk));
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("modified"),
        "{e}"
    );
    let side = modified.join(PROVENANCE_FILE);
    let mut p: serde_json::Value = serde_json::from_slice(&fs::read(&side).unwrap()).unwrap();
    p["files"]["adapter_model.safetensors"]["sha256"] = provenance::sha256_bytes(&b).into();
    fs::write(&side, serde_json::to_string_pretty(&p).unwrap() + "\n").unwrap();
    let e = err(&export(&modified, &t.path().join("exp-mod"), &tk));
    assert!(e.contains("does not verify"), "{e}");
    let o = inspect(&modified, None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("INVALID"));

    // unsigned, and a PEFT adapter: refused under --trusted-keys, accepted without
    let e = err(&export(trained(), &t.path().join("exp-unsigned"), &tk));
    assert!(e.contains("not signed"), "{e}");
    let peft = t.path().join("peft");
    copy_dir(&tiny().join("adapter"), &peft);
    let e = err(&export(&peft, &t.path().join("exp-peft"), &tk));
    assert!(
        e.contains("not signed") && e.contains(PROVENANCE_FILE),
        "{e}"
    );
    // sign seals a PEFT adapter (recording the base fingerprint), then it is accepted
    ok(&bin(&[
        "sign",
        s(&peft),
        "--key",
        s(&alice),
        "--base",
        s(&base()),
    ]));
    assert!(peft.join(SIGNATURES_FILE).is_file());
    assert_eq!(
        sidecar(&peft)["base"]["fingerprint"],
        sidecar(trained())["base"]["fingerprint"]
    );
    ok(&export(&peft, &t.path().join("exp-peft"), &tk));
}

#[test]
fn keygen_refuses_to_overwrite_and_bad_key_files_are_named() {
    let t = tempfile::tempdir().unwrap();
    let k = keygen(t.path(), "k");
    let before = fs::read(&k).unwrap();
    let e = err(&bin(&["keygen", "--out", s(&k)]));
    assert!(
        e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(fs::read(&k).unwrap(), before);
    let bad = t.path().join("bad_keys");
    fs::write(&bad, "# keys\ned25519 not-hex alice\n").unwrap();
    let e = err(&export(
        &tiny().join("adapter"),
        &t.path().join("x"),
        &["--trusted-keys", s(&bad)],
    ));
    assert!(e.contains("bad_keys") && e.contains("line 2"), "{e}");
    let e = err(&bin(&[
        "sign",
        s(&tiny().join("adapter")),
        "--key",
        &format!("{}.pub", k.display()),
    ]));
    assert!(e.contains("not a lora-qat secret key"), "{e}");
}

#[test]
fn combine_lists_its_parts_and_refuses_other_bases_and_tampered_parts() {
    let t = tempfile::tempdir().unwrap();
    let second = copy_of_trained(t.path());
    let out = t.path().join("combined");
    ok(&bin(&[
        "combine",
        s(trained()),
        s(&second),
        "--output-path",
        s(&out),
    ]));
    let p = sidecar(&out);
    assert_eq!(p["origin"], "combine");
    assert_eq!(p["base"], sidecar(trained())["base"]);
    let parts = p["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    let digest = provenance::sha256_bytes(&fs::read(trained().join(PROVENANCE_FILE)).unwrap());
    assert_eq!(parts[0]["provenance_sha256"], digest.as_str());
    assert_eq!(parts[1]["provenance"]["origin"], "train");
    assert!(p["files"].get("README.md").is_some());
    let report = ok(&inspect(&out, Some(&base())));
    assert!(
        report.contains("[match]") && report.contains("part 1"),
        "{report}"
    );

    // a part that records another base
    let other = t.path().join("other");
    copy_dir(trained(), &other);
    let side = other.join(PROVENANCE_FILE);
    let mut v = sidecar(&other);
    v["base"]["fingerprint"] = format!("sha256:{}", "0".repeat(64)).into();
    fs::write(&side, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    let out2 = t.path().join("combined2");
    let e = err(&bin(&[
        "combine",
        s(trained()),
        s(&other),
        "--output-path",
        s(&out2),
    ]));
    assert!(e.contains("part 2") && e.contains("another base"), "{e}");
    assert!(!out2.exists());

    // a tampered part
    let w = second.join("adapter_model.safetensors");
    let mut b = fs::read(&w).unwrap();
    let n = b.len() - 9;
    b[n] ^= 4;
    fs::write(&w, b).unwrap();
    let e = err(&bin(&[
        "combine",
        s(trained()),
        s(&second),
        "--output-path",
        s(&out2),
    ]));
    assert!(
        e.contains("part 2") && e.contains("adapter_model.safetensors"),
        "{e}"
    );
    assert!(!out2.exists());
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
