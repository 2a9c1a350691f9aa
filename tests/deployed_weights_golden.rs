//! "What is trained is what is served": the deployed weights — `kernels::deploy::deploy`, the one
//! function the QAT op decodes its `Wq` from and merge-export writes, fed by the adapter's own
//! per-expert slicing — equal the exported checkpoint that transformers + PEFT produce for the
//! fixture adapter (`export.*` in golden.safetensors: bf16 attention weights, U8 expert blocks/scales).
//! Tolerances from golden.json: scales identical; blocks identical except at most 1e-4 of the
//! nibbles, each one code step away; bf16 identical except at most 1e-4 of the elements, each one
//! ulp away (the golden summed W+dW in f64, we sum in f32).

mod export_support;
mod model_support;

use std::path::PathBuf;

use adapters::{AttnProj, ExpertProj as LoraExpertProj, LoraAdapter};
use export_support::{bf16_diffs, nibble_diffs};
use kernels::deploy::{deploy, Deployed, HostLora};
use kernels::mxfp4;
use kernels::ops::Quantizer;
use lora_qat::checkpoint::{names, Checkpoint, ExpertProj};
use safetensors::SafeTensors;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss")
}

#[test]
fn deployed_weights_equal_the_reference_export() {
    let dir = fixture();
    let ckpt = Checkpoint::open(&dir.join("base")).expect("fixture base opens");
    let adapter = LoraAdapter::load(&dir.join("adapter")).expect("fixture adapter loads");
    let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
    let golden = SafeTensors::deserialize(&golden_bytes).expect("golden parses");
    let layers = ckpt.config().num_hidden_layers;
    let (mut bf16_total, mut bf16_diff, mut nib_total, mut nib_diff) = (0, 0, 0, 0);
    let mut checked = 0;

    for l in 0..layers {
        for (proj, name) in AttnProj::ALL
            .iter()
            .zip(["q_proj", "k_proj", "v_proj", "o_proj"])
        {
            let Some(lo) = adapter.attention(l, *proj) else {
                continue;
            };
            let tensor = names::attn_weight(l, name);
            let mut w = ckpt.bf16_to_f32(&tensor).expect("attention weight");
            let shape = [lo.out_features, lo.in_features];
            let host = HostLora {
                a: lo.a,
                b: lo.b,
                rank: lo.r,
                scale: lo.scale,
            };
            let Deployed::Bf16(got) = deploy(&mut w, shape, &[host], Quantizer::Bf16).unwrap()
            else {
                panic!("bf16 expected")
            };
            let want = golden
                .tensor(&format!("export.{tensor}"))
                .expect("golden export");
            let (diff, far) = bf16_diffs(&got, want.data());
            assert_eq!(
                far, 0,
                "{tensor}: {far} elements more than one bf16 ulp away"
            );
            bf16_total += w.len();
            bf16_diff += diff;
            checked += 1;
        }
        for (proj, lproj) in [
            (ExpertProj::GateUp, LoraExpertProj::GateUp),
            (ExpertProj::Down, LoraExpertProj::Down),
        ] {
            let Some(lo) = adapter.experts(l, lproj) else {
                continue;
            };
            let packed = ckpt.experts(l, proj).expect("packed experts");
            let (rows, cols) = (packed.rows, packed.cols);
            let (mut blocks, mut scales) = (Vec::new(), Vec::new());
            for e in 0..lo.experts {
                let mut w = vec![0f32; rows * cols];
                mxfp4::dequantize(packed.expert_blocks(e), packed.expert_scales(e), &mut w)
                    .expect("dequantize");
                let b_e = lo.expert_b(e);
                let host = HostLora {
                    a: lo.expert_a(e),
                    b: &b_e,
                    rank: lo.r,
                    scale: lo.scale,
                };
                let Deployed::Mxfp4 {
                    blocks: eb,
                    scales: es,
                } = deploy(&mut w, [rows, cols], &[host], Quantizer::Mxfp4).unwrap()
                else {
                    panic!("mxfp4 expected")
                };
                blocks.extend(eb);
                scales.extend(es);
            }
            let stem = format!("model.layers.{l}.mlp.experts.{}", proj.stem());
            let want_s = golden
                .tensor(&format!("export.{stem}_scales"))
                .expect("scales");
            assert_eq!(scales, want_s.data(), "{stem}_scales differ");
            let want_b = golden
                .tensor(&format!("export.{stem}_blocks"))
                .expect("blocks");
            let (diff, far) = nibble_diffs(&blocks, want_b.data());
            assert_eq!(
                far, 0,
                "{stem}_blocks: {far} nibbles more than one code away"
            );
            nib_total += blocks.len() * 2;
            nib_diff += diff;
            checked += 1;
        }
    }
    // 16 attention projections (4 layers) and 6 expert projections (layers 0, 1, 3)
    assert_eq!(
        checked, 22,
        "every exported tensor of the golden set is checked"
    );
    assert!(
        bf16_diff as f64 <= 1e-4 * bf16_total as f64,
        "{bf16_diff} of {bf16_total} bf16 elements differ"
    );
    assert!(
        nib_diff as f64 <= 1e-4 * nib_total as f64,
        "{nib_diff} of {nib_total} nibbles differ"
    );
}
