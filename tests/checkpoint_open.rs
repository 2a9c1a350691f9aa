//! Opening the tiny fixture: config in both styles, tensor lookup, zero-copy views, experts.

use std::path::{Path, PathBuf};

use lora_qat::checkpoint::{names, Checkpoint, Dtype, ExpertProj, GptOssConfig, LayerType};

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt-oss/base")
}

#[test]
fn released_style_config() {
    let c = GptOssConfig::from_file(&base().join("config.json")).unwrap();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.num_local_experts,
            c.experts_per_token
        ),
        (4, 8, 3)
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.head_dim),
        (64, 96, 16)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (6, 2));
    assert_eq!((c.sliding_window, c.vocab_size), (4, 384));
    assert_eq!(c.layer_types[0], LayerType::SlidingAttention);
    assert_eq!(c.layer_types[1], LayerType::FullAttention);
    assert_eq!(c.rope.theta, 150000.0);
    assert_eq!(c.rope.factor, 32.0);
    assert_eq!(c.rope.original_max_position_embeddings, 4096);
    assert!(!c.rope.truncate);
    assert!((c.rope.attention_scaling() - (0.1 * 32f64.ln() + 1.0)).abs() < 1e-12);
    assert_eq!(c.eos_token_id, Some(vec![377]));
    assert_eq!(c.pad_token_id, Some(376));
    assert_eq!(c.swiglu_limit, 7.0);
    assert_eq!(c.quantization.as_ref().unwrap().quant_method, "mxfp4");
}

#[test]
fn transformers5_style_config_matches_released() {
    let text = std::fs::read_to_string(base().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let o = v.as_object_mut().unwrap();
    let mut rope = o.remove("rope_scaling").unwrap();
    let theta = o.remove("rope_theta").unwrap();
    rope.as_object_mut()
        .unwrap()
        .insert("rope_theta".into(), theta);
    o.insert("rope_parameters".into(), rope);
    o.remove("experts_per_token");
    o.insert("eos_token_id".into(), serde_json::json!([377, 200]));
    let c5 = GptOssConfig::from_json_str(&v.to_string(), "t5.json").unwrap();
    let mut c = GptOssConfig::from_file(&base().join("config.json")).unwrap();
    c.eos_token_id = Some(vec![377, 200]);
    assert_eq!(c5, c);
}

#[test]
fn opens_the_sharded_fixture_and_reads_without_copying() {
    let ck = Checkpoint::open(&base()).unwrap();
    assert!(ck.is_sharded());
    assert_eq!(ck.tensor_names().count(), 2 + 1 + 4 * 19);
    assert!(ck.unexpected_tensors().is_empty());
    let t = ck.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(t.dtype, Dtype::BF16);
    assert_eq!(t.shape, &[96, 64]);
    assert_eq!(t.bytes.len(), 96 * 64 * 2);
    assert!(t.file.ends_with("model-00000-of-00001.safetensors"));

    // Same bytes as the safetensors crate reading the file independently.
    let file = std::fs::read(base().join("model-00001-of-00001.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    for name in [
        names::FINAL_NORM,
        "model.layers.3.mlp.experts.down_proj_scales",
    ] {
        assert_eq!(
            ck.tensor(name).unwrap().bytes,
            st.tensor(name).unwrap().data()
        );
    }
    let want: Vec<f32> = st
        .tensor(names::FINAL_NORM)
        .unwrap()
        .data()
        .chunks(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(ck.bf16_to_f32(names::FINAL_NORM).unwrap(), want);
    assert!(ck
        .bf16_to_f32("model.layers.0.mlp.experts.down_proj_blocks")
        .is_err());
    assert!(ck.u8_bytes(names::FINAL_NORM).is_err());
    assert!(ck.tensor("model.layers.9.input_layernorm.weight").is_err());
}

#[test]
fn packed_experts_views() {
    let ck = Checkpoint::open(&base()).unwrap();
    let gu = ck.experts(2, ExpertProj::GateUp).unwrap();
    assert_eq!((gu.experts, gu.rows, gu.cols), (8, 192, 64));
    assert_eq!(gu.blocks.len(), 8 * 192 * 2 * 16);
    assert_eq!(gu.scales.len(), 8 * 192 * 2);
    assert_eq!(gu.bias.len(), 8 * 192);
    assert_eq!(gu.expert_blocks(7), &gu.blocks[7 * 192 * 32..]);
    assert_eq!(gu.expert_scales(1), &gu.scales[384..768]);
    let dn = ck.experts(3, ExpertProj::Down).unwrap();
    assert_eq!((dn.experts, dn.rows, dn.cols), (8, 64, 96));
    assert_eq!(dn.expert_blocks(0).len(), 64 * 3 * 16);
    assert_eq!(
        dn.bias,
        ck.bf16_to_f32("model.layers.3.mlp.experts.down_proj_bias")
            .unwrap()
    );
    assert!(ck.experts(4, ExpertProj::Down).is_err());
}

#[test]
fn checkpoint_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
}
