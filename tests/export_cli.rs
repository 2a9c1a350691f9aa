//! `lora-qat merge-export` and `verify` end to end (the binary) on the tiny fixture: the export
//! equals the reference export of transformers + PEFT (golden `export.*`) and the base elsewhere,
//! `score` on it reproduces the golden merged logits; train = serve after a QAT run; several
//! adapters; verify catches tampering; bad inputs leave nothing behind.

mod cli_support;
mod export_support;
mod model_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adapters::LoraAdapter;
use cli_support::{bin, err, ok, s, train_tiny};
use export_support::*;
use model_support::*;
use safetensors::SafeTensors;

fn export(adapters: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let base = fixture().join("base");
    let mut a = vec![
        "merge-export",
        "--base-path",
        s(&base),
        "--output-path",
        s(out),
    ];
    for p in adapters {
        a.extend(["--lora-path", s(p)]);
    }
    a.extend(extra);
    bin(&a)
}

fn verify(export: &Path, adapters: &[&Path]) -> Output {
    let base = fixture().join("base");
    let mut a = vec!["verify", "--export", s(export), "--base-path", s(&base)];
    for p in adapters {
        a.extend(["--lora-path", s(p)]);
    }
    bin(&a)
}

/// Every tensor of a checkpoint directory: name -> (shard file, bytes), read with the
/// `safetensors` crate (not lora-qat's reader).
fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (t, v) in st.tensors() {
            out.insert(t, (name.clone(), v.data().to_vec()));
        }
    }
    out
}

fn score(base: &Path, adapter: Option<&Path>, input: &Path, out: &Path) -> ScoreOutput {
    let mut a = vec![
        "score",
        "--base",
        s(base),
        "--input",
        s(input),
        "--out",
        s(out),
    ];
    if let Some(ad) = adapter {
        a.extend(["--adapter", s(ad), "--quant", "mxfp4"]);
    }
    ok(&bin(&a));
    read_output(out)
}

#[test]
fn fixture_export_equals_the_reference_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (base, adapter) = (fixture().join("base"), fixture().join("adapter"));
    let out = dir.path().join("export");
    ok(&export(&[&adapter], &out, &[]));

    let golden_bytes = std::fs::read(fixture().join("golden.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden_bytes).unwrap();
    let (b, e) = (tensors(&base), tensors(&out));
    assert_eq!(
        b.keys().collect::<Vec<_>>(),
        e.keys().collect::<Vec<_>>(),
        "same tensors"
    );
    let (mut changed, mut same, mut nib, mut nib_diff, mut bf, mut bf_diff) = (0, 0, 0, 0, 0, 0);
    for (name, (shard, want)) in &b {
        let (got_shard, got) = &e[name];
        assert_eq!(got_shard, shard, "{name}: same shard file as the base");
        match golden.tensor(&format!("export.{name}")) {
            Ok(g) if name.ends_with("_scales") => {
                assert_eq!(got, g.data(), "{name}: scales identical to the reference");
                changed += 1;
            }
            Ok(g) if name.ends_with("_blocks") => {
                let (d, far) = nibble_diffs(got, g.data());
                assert_eq!(far, 0, "{name}: nibbles more than one code step away");
                (nib, nib_diff) = (nib + got.len() * 2, nib_diff + d);
                changed += 1;
            }
            Ok(g) => {
                let (d, far) = bf16_diffs(got, g.data());
                assert_eq!(far, 0, "{name}: elements more than one bf16 ulp away");
                (bf, bf_diff) = (bf + got.len() / 2, bf_diff + d);
                changed += 1;
            }
            Err(_) => {
                assert_eq!(got, want, "{name}: byte-identical to the base");
                same += 1;
            }
        }
    }
    // golden.json: at most 1e-4 of the nibbles / bf16 elements one step away
    assert!(
        nib_diff as f64 <= 1e-4 * nib as f64,
        "{nib_diff} of {nib} nibbles"
    );
    assert!(
        bf_diff as f64 <= 1e-4 * bf as f64,
        "{bf_diff} of {bf} bf16 elements"
    );
    assert_eq!(
        changed, 28,
        "16 attention weights and 6 expert block/scale pairs"
    );
    assert!(same > 0);
    // side files copied, index mirrors the base, provenance written
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ] {
        assert_eq!(
            std::fs::read(base.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
    let index = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("model.safetensors.index.json")).unwrap())
            .unwrap()
    };
    assert_eq!(index(&base)["weight_map"], index(&out)["weight_map"]);
    assert_eq!(
        index(&out)["metadata"]["total_size"],
        index(&base)["metadata"]["total_size"]
    );
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lora_qat_export.json")).unwrap()).unwrap();
    assert_eq!(prov["adapters"].as_array().unwrap().len(), 1);
    assert_eq!(prov["tool"], "lora-qat");

    let stderr = String::from_utf8_lossy(&verify(&out, &[&adapter]).stderr).into_owned();
    assert!(stderr.contains("all 79 tensors match"), "{stderr}");
    ok(&verify(&out, &[&adapter]));

    // score on the export (no adapter) gives the reference's merged, deployed logits
    let input = input_file(dir.path(), "ids.safetensors", true);
    let (_, logits, loss, _) = score(&out, None, &input, &dir.path().join("s.safetensors"));
    let g = Golden::load();
    let diff = max_abs_diff(&logits, g.f32("logits_merged_deployed"));
    assert!(
        diff <= LOGITS_TOL,
        "logits_merged_deployed: max abs diff {diff}"
    );
    let want = g.f32("loss_merged_deployed")[0];
    assert!(
        ((loss - want) / want).abs() <= LOSS_REL_TOL,
        "{loss} vs {want}"
    );

    // existing output: refused without --overwrite, replaced with it
    assert!(err(&export(&[&adapter], &out, &[])).contains("already exists"));
    ok(&export(&[&adapter], &out, &["--overwrite"]));
    ok(&verify(&out, &[&adapter]));
}

/// A short QAT run on the fixture; returns its output directory (the final adapter).
fn train(dir: &Path) -> PathBuf {
    train_tiny(dir, 8, &["--save-strategy", "no"])
}

#[test]
fn train_equals_serve() {
    use burn::backend::Flex;
    use kernels::ops::{quantized_weight, BaseWeight, Quantizer};
    use lora_qat::checkpoint::Checkpoint;
    use lora_qat::model::GptOssForCausalLM;

    let dir = tempfile::tempdir().unwrap();
    let run = train(dir.path());
    let base = fixture().join("base");
    let out = dir.path().join("export");
    ok(&export(&[&run], &out, &[]));
    ok(&verify(&out, &[&run]));

    // the served model (the export, no adapter) and the trained one (base + adapter, QAT forward)
    let input = input_file(dir.path(), "ids.safetensors", true);
    let (_, served, served_loss, _) = score(&out, None, &input, &dir.path().join("a.out"));
    let (_, trained, trained_loss, _) = score(&base, Some(&run), &input, &dir.path().join("b.out"));
    let diff = max_abs_diff(&served, &trained);
    eprintln!(
        "train = serve: max abs logit difference {diff:e}, loss {served_loss} vs {trained_loss}"
    );
    assert!(diff <= 1e-5, "max abs logit difference {diff}");

    // the exported bytes decode to exactly the Wq the training op computes with, through the op's
    // own code path (`quantized_weight` of the model's packed base and per-expert LoRA)
    let dev = Default::default();
    let ckpt = std::sync::Arc::new(Checkpoint::open(&base).unwrap());
    let adapter = LoraAdapter::load(&run).unwrap();
    let model = GptOssForCausalLM::<Flex>::from_checkpoint(ckpt.clone(), &dev)
        .unwrap()
        .with_adapter(&adapter, ckpt.config())
        .unwrap();
    let exported = Checkpoint::open(&out).unwrap();
    let mut checked = 0;
    for (l, layer) in model.model.layers.iter().enumerate() {
        for (proj, p) in [
            (
                lora_qat::checkpoint::ExpertProj::GateUp,
                &layer.mlp.experts.gate_up_proj,
            ),
            (
                lora_qat::checkpoint::ExpertProj::Down,
                &layer.mlp.experts.down_proj,
            ),
        ] {
            let Some(lora) = &p.lora else { continue };
            let packed = exported.experts(l, proj).unwrap();
            for e in 0..packed.experts {
                let base_w = BaseWeight::<Flex>::Packed(p.packed[e].clone());
                let wq = quantized_weight(&base_w, Some(&lora.expert(e)), Quantizer::Mxfp4, &dev)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                let mut served = vec![0f32; wq.len()];
                kernels::mxfp4::dequantize(
                    packed.expert_blocks(e),
                    packed.expert_scales(e),
                    &mut served,
                )
                .unwrap();
                let same = wq
                    .iter()
                    .zip(&served)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "layer {l} {proj:?} expert {e}: exported bytes != trained Wq"
                );
                checked += 1;
            }
        }
        let a = &layer.self_attn;
        for (name, p) in [
            ("q_proj", &a.q_proj),
            ("k_proj", &a.k_proj),
            ("v_proj", &a.v_proj),
            ("o_proj", &a.o_proj),
        ] {
            let Some(lora) = &p.lora else { continue };
            let base_w = BaseWeight::Dense(p.weight_f32());
            let wq = quantized_weight(&base_w, Some(&lora.as_lora()), Quantizer::Bf16, &dev)
                .unwrap()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap();
            let served = exported
                .bf16_to_f32(&lora_qat::checkpoint::names::attn_weight(l, name))
                .unwrap();
            let same = wq
                .iter()
                .zip(&served)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "layer {l} {name}: exported bf16 != trained Wq");
            checked += 1;
        }
    }
    assert!(checked > 16, "{checked} weights checked");
}

#[test]
fn several_adapters_are_summed_and_verify_catches_any_difference() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture().join("adapter");
    let out = dir.path().join("twice");
    ok(&export(&[&adapter, &adapter], &out, &[]));
    ok(&verify(&out, &[&adapter, &adapter]));
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lora_qat_export.json")).unwrap()).unwrap();
    assert_eq!(prov["adapters"].as_array().unwrap().len(), 2);
    // against one adapter only: the merged tensors differ, the copied ones still match
    let o = verify(&out, &[&adapter]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(err(&o).contains("do not match"));
    assert!(
        stdout.contains("MISMATCH  merged     model.layers.0.self_attn.q_proj.weight"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok        copied     model.embed_tokens.weight"),
        "{stdout}"
    );

    // one flipped byte in the last tensor of a shard is reported by name
    let shard = out.join("model-00001-of-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = {
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut t: Vec<_> = meta.tensors().into_iter().collect();
        t.sort_by_key(|(_, info)| info.data_offsets.1);
        t.last().unwrap().0.clone()
    };
    let n = bytes.len();
    bytes[n - 1] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();
    let o = verify(&out, &[&adapter, &adapter]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(err(&o).contains("1 of 79 tensors do not match"));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("MISMATCH") && l.contains(&format!(" {last}:"))),
        "{last}: {stdout}"
    );
}

/// A copy of the fixture adapter with its tensors changed by `edit(key, shape, values)`.
fn edited_adapter(dir: &Path, edit: impl Fn(&str, &mut Vec<usize>, &mut Vec<f32>)) -> PathBuf {
    let a = LoraAdapter::load(&fixture().join("adapter")).unwrap();
    let parts: Vec<_> = a
        .tensors()
        .map(|(k, s, d)| {
            let (mut s, mut d) = (s.to_vec(), d.to_vec());
            edit(k, &mut s, &mut d);
            (k.to_string(), s, d)
        })
        .collect();
    let p = dir.join("edited");
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir(&p).unwrap();
    std::fs::copy(
        fixture().join("adapter/adapter_config.json"),
        p.join("adapter_config.json"),
    )
    .unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = parts
        .into_iter()
        .map(|(k, s, d)| (k, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let t: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = owned
        .iter()
        .map(|(k, s, d)| (k.as_str(), safetensors::Dtype::F32, s.clone(), d.clone()))
        .collect();
    write_tensors(&p.join("adapter_model.safetensors"), &t);
    p
}

/// Nothing at `out` and no temporary directory beside it.
fn nothing_left(out: &Path) {
    assert!(!out.exists(), "{} exists", out.display());
    let parent = out.parent().unwrap();
    if parent.is_dir() {
        let partial: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(partial.is_empty(), "left behind: {partial:?}");
    }
}

#[test]
fn bad_inputs_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture().join("base");
    let adapter = fixture().join("adapter");
    let out = dir.path().join("out").join("export");

    // an adapter for another base (a shape that does not fit)
    let bad = edited_adapter(dir.path(), |k, s, d| {
        if k.contains("layers.0.self_attn.q_proj.lora_A") {
            s[1] += 32;
            d.extend(vec![0.0; s[0] * 32]);
        }
    });
    let e = err(&export(&[&bad], &out, &[]));
    assert!(e.contains("q_proj.lora_A") && e.contains("edited"), "{e}");
    nothing_left(&out);

    // a merged expert weight that is not finite
    let huge = edited_adapter(dir.path(), |k, _, d| {
        if k.contains("mlp.experts") {
            d.iter_mut().for_each(|v| *v = 1e30);
        }
    });
    let e = err(&export(&[&huge], &out, &[]));
    assert!(
        e.contains("mlp.experts") && e.contains("expert 0") && e.contains("non-finite"),
        "{e}"
    );
    nothing_left(&out);

    // the base itself, inside it, around it
    assert!(err(&export(&[&adapter], &base, &[])).contains("base checkpoint itself"));
    let inside = base.join("export");
    assert!(err(&export(&[&adapter], &inside, &[])).contains("inside the base"));
    assert!(!inside.exists());
    assert!(err(&export(
        &[&adapter],
        base.parent().unwrap(),
        &["--overwrite"]
    ))
    .contains("would delete the base"));

    // an unwritable output (its parent is a file)
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = err(&export(&[&adapter], &file.join("export"), &[]));
    assert!(e.contains("file"), "{e}");

    // disk full: a 150 KB file size limit (SIGXFSZ ignored, so writes fail with EFBIG)
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 300; exec '{}' merge-export --base-path '{}' --lora-path '{}' --output-path '{}'",
        env!("CARGO_BIN_EXE_lora-qat"),
        s(&base),
        s(&adapter),
        s(&out)
    );
    let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    let e = err(&o);
    assert!(
        e.contains("File too large") || e.contains("os error 27"),
        "{e}"
    );
    nothing_left(&out);
}

#[test]
fn bf16_export_holds_the_deployed_experts_dequantized() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = fixture().join("adapter");
    let (mx, bf) = (dir.path().join("mxfp4"), dir.path().join("bf16"));
    ok(&export(&[&adapter], &mx, &[]));
    ok(&export(&[&adapter], &bf, &["--dtype", "bf16"]));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bf.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("quantization_config").is_none());
    assert_eq!(cfg["hidden_size"], 64);

    let (m, b) = (tensors(&mx), tensors(&bf));
    let (experts, rows_gu, hidden) = (8, 2 * 96, 64);
    let mut converted = 0;
    for (name, (shard, bytes)) in &m {
        let Some(stem) = name.strip_suffix("_blocks") else {
            if name.ends_with("_scales") {
                assert!(!b.contains_key(name), "{name} is gone");
            } else {
                assert_eq!(
                    &b[name],
                    &(shard.clone(), bytes.clone()),
                    "{name} unchanged"
                );
            }
            continue;
        };
        let scales = &m[&format!("{stem}_scales")].1;
        let (rows, cols) = if stem.ends_with("gate_up_proj") {
            (rows_gu, hidden)
        } else {
            (hidden, 96)
        };
        let mut w = vec![0f32; experts * rows * cols];
        kernels::mxfp4::dequantize(bytes, scales, &mut w).unwrap();
        let (got_shard, got) = &b[stem];
        assert_eq!(got_shard, shard, "{stem} takes the blocks' shard");
        assert_eq!(got.len(), w.len() * 2);
        for e in 0..experts {
            for r in 0..rows {
                for c in 0..cols {
                    let i = (e * cols + c) * rows + r; // [E, in, out]
                    let v = u16::from_le_bytes([got[2 * i], got[2 * i + 1]]);
                    let want = w[(e * rows + r) * cols + c];
                    assert_eq!(
                        f32::from_bits((v as u32) << 16).to_bits(),
                        want.to_bits(),
                        "{stem}[{e}, {c}, {r}]"
                    );
                }
            }
        }
        converted += 1;
    }
    assert_eq!(converted, 8, "both projections of all 4 layers");
}
