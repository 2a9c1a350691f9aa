//! The planner against figures computed by hand from the real configs (`configs/gpt-oss-*.json`):
//! H = I = 2880, Q = 64·64 = 4096, KV = 8·64 = 512, V = 201088, heads 64, top-4;
//! 20B: 24 layers × 32 experts; 120B: 36 layers × 128 experts. seq 4096, batch 1: T = 4096,
//! N = T·4 = 16384. LoRA r = 8 on q/k/v/o and both expert projections of every layer.

use super::*;

const CFG_20B: &str = include_str!("../../configs/gpt-oss-20b.json");
const CFG_120B: &str = include_str!("../../configs/gpt-oss-120b.json");

fn config(json: &str) -> GptOssConfig {
    GptOssConfig::from_json_str(json, "test").unwrap()
}

fn options(devices: &str, gc: Option<bool>) -> PlanOptions {
    PlanOptions {
        devices: devices.parse().unwrap(),
        seq: 4096,
        batch: 1,
        gradient_checkpointing: gc,
        lora_r: 8,
        targets: None,
        layers_to_transform: None,
        qat: true,
    }
}

fn model(json: &str) -> ModelMemory {
    let c = config(json);
    ModelMemory::new(&c, &options("1x80GB", None).workload(&c).unwrap())
}

#[test]
fn per_layer_figures_by_hand() {
    for (json, e) in [(CFG_20B, 32u64), (CFG_120B, 128)] {
        let m = model(json);
        let l = &m.layers[0];
        // packed experts: E·(2I·H + H·I)·(0.5 + 1/32) = E·24_883_200·17/32 = E·13_219_200
        assert_eq!(l.experts_packed, e * 13_219_200);
        // non-expert: norms 2·2880 + q 4096·2880+4096 + k,v 2·(512·2880+512) + o 2880·4096+2880
        // + sinks 64 = 26_555_904; router E·2880 + E; expert biases E·(5760 + 2880)
        assert_eq!(l.non_expert_params, 26_555_904 + e * 2881 + e * 8640);
        // LoRA: attention 8·((2880+4096) + 2·(2880+512) + (4096+2880)) = 165_888;
        // experts E·8·((5760+2880) + (2880+2880)) = E·115_200
        assert_eq!(l.lora_params, 165_888 + e * 115_200);
        // saved graph, f32 elements: norms 4·T·H = 47_185_920; flash q,k,v,out,lse
        // T·(2·4096 + 2·512 + 64) = 38_010_880; x·Aᵀ 4 projections T·8·4 = 131_072; o_proj input
        // T·Q = 16_777_216; router T·E + 3·T·4 = 4096·E + 49_152; experts: x of gate_up N·H
        // + x of down N·I + 6·N·I + y N·H + scores N = 16384·(4·2880 + 2880 + ... ) =
        // 16384·(2880·9 + 1) = 424_689_664; the attention matrices widened from bf16 for their
        // ops, q 4096·2880 + k,v 2·512·2880 + o 2880·4096 = 26_542_080; plus 16·N bytes of i64
        // row order and slots.
        assert_eq!(l.bf16_params, 26_542_080);
        let elems = 47_185_920
            + 38_010_880
            + 131_072
            + 16_777_216
            + 4096 * e
            + 49_152
            + 424_689_664
            + 26_542_080;
        assert_eq!(l.saved, elems * 4 + 16 * 16384);
        // one layer input [T, H] f32
        assert_eq!(l.input, 4096 * 2880 * 4);
        // deployed gate_up of all experts: E·5760·2880·(1/2 + 4/32) = E·10_368_000
        assert_eq!(l.deploy, e * 10_368_000);
    }
    // 20B: 2_214_330_368 B per layer saved; 120B: 2_215_903_232 (router logits grow with E)
    assert_eq!(model(CFG_20B).layers[0].saved, 2_214_330_368);
    assert_eq!(model(CFG_120B).layers[0].saved, 2_215_903_232);
    // cross-entropy: 16·2^20 / 201088 = 83 rows; logits + grad 2·83·201088·4 = 133_522_432 B
    assert_eq!(model(CFG_20B).chunk_rows, 83);
    assert_eq!(model(CFG_20B).ce_chunks, 133_522_432);
}

#[test]
fn gpt_oss_20b_on_one_80gb_fits_data_parallel() {
    let p = plan("20b", &config(CFG_20B), &options("1x80GB", None)).unwrap();
    let [off, on] = &p.replica;
    // packed experts: 24 · 32 · 13_219_200 = 10_152_345_600
    assert_eq!(on.experts_packed, 10_152_345_600);
    // non-expert, all bf16 as stored: (24·(26_555_904 + 32·11_521) + 2·201088·2880 + 2880)·2
    // = 3_608_919_168; as held: bf16 matrices (24·26_542_080 + 2·201088·2880)·2 = 3_590_553_600
    // + f32 vectors (24·(13_824 + 32·11_521) + 2880)·4 = 36_731_136 → 3_627_284_736
    assert_eq!(on.non_expert_bf16, 3_608_919_168);
    assert_eq!(on.non_expert_held, 3_627_284_736);
    // LoRA: 24·(165_888 + 32·115_200) = 92_454_912 params · 16 B = 1_479_278_592
    assert_eq!(p.lora_params, 92_454_912);
    assert_eq!(on.lora_state, 1_479_278_592);
    // checkpointed activations: 24 inputs 24·47_185_920 + one graph 2_214_330_368 + RoPE
    // 2·4096·64·4 + head (2·T·H + 2·T)·4 = 3_443_294_208
    assert_eq!(on.activations, 3_443_294_208);
    // transient: deploy 331_776_000 + low-rank 3·16384·256·4 = 50_331_648 + attention
    // 4096·2880·4 + (T·5120 + T·64)·4 = 132_120_576 + in flight 2_214_330_368 + CE 133_522_432
    // + lm_head widened 201088·2880·4 = 2_316_533_760
    assert_eq!(on.transient, 5_178_614_784);
    // total 23_880_817_920 ≤ 72e9 usable (80e9 − 10%): data parallel, with checkpointing
    assert_eq!(on.total, 23_880_817_920);
    assert_eq!(p.usable_per_device, 72_000_000_000);
    // without checkpointing: activations 24·2_214_330_368 + 2_097_152 + 94_404_608 =
    // 53_240_430_592, total 10_152_345_600 + 3_627_284_736 + 1_479_278_592 + 53_240_430_592
    // + (5_178_614_784 − 2_214_330_368 + 2_214_330_368) = 73_677_954_304 > 72e9 (by 1.7 GB)
    assert_eq!(off.total, 73_677_954_304);
    let pl = p.placement.as_ref().unwrap();
    assert_eq!(pl.kind, StrategyKind::DataParallel);
    assert!(pl.gradient_checkpointing);
    assert_eq!((pl.replicas, pl.stages.len()), (1, 1));
    // forced off, 1×80GB refuses; 8×80GB with checkpointing: 8 replicas
    let off_plan = plan("20b", &config(CFG_20B), &options("1x80GB", Some(false))).unwrap();
    assert!(!off_plan.fits());
    let eight = plan("20b", &config(CFG_20B), &options("8x80GB", None)).unwrap();
    assert_eq!(eight.placement.unwrap().replicas, 8);
}

#[test]
fn gpt_oss_120b_on_one_80gb_does_not_fit_and_says_what_would() {
    let p = plan("120b", &config(CFG_120B), &options("1x80GB", None)).unwrap();
    let on = &p.replica[1];
    // packed experts 36·128·13_219_200 = 60_914_073_600; non-expert as held: bf16 matrices
    // (36·26_542_080 + 2·201088·2880)·2 = 4_227_563_520 + f32 vectors
    // (36·(13_824 + 128·11_521) + 2880)·4 = 214_357_248 → 4_441_920_768;
    // LoRA 36·(165_888 + 128·115_200) = 536_813_568 params → 8_589_017_088 B;
    // activations 36·47_185_920 + 2_215_903_232 + 2_097_152 + 94_404_608 = 4_011_098_112;
    // transient 1_327_104_000 + 201_326_592 + 132_120_576 + 2_215_903_232 + 133_522_432
    // + 2_316_533_760 = 6_326_510_592;
    // total 84_282_620_160 > 72e9: the packed experts alone are 60.9 GB of 72
    assert_eq!(on.experts_packed, 60_914_073_600);
    assert_eq!(on.non_expert_held, 4_441_920_768);
    assert_eq!(p.lora_params, 536_813_568);
    assert_eq!(on.total, 84_282_620_160);
    assert!(!p.fits());
    let r = p.refusal.as_ref().unwrap();
    assert_eq!((r.needed, r.available), (84_282_620_160, 72_000_000_000));
    assert_eq!(r.dominant.0, "packed experts");
    // two devices of 80 GB hold it as layer placement (about 46 GB each)
    assert!(
        r.suggestions.iter().any(|s| s.contains("2 × 80.00 GB")),
        "{r:?}"
    );
    // AdamW m, v on the host: 536_813_568 · 8 = 4_294_508_544;
    // 84_282_620_160 − 4_294_508_544 = 79_988_111_616 > 72e9
    assert!(
        r.suggestions
            .iter()
            .any(|s| s.contains("-4.29 GB)") && s.contains("need 79.99 GB: still 7.99 GB over")),
        "{r:?}"
    );
    assert!(plan_for_training(&config(CFG_120B), &options("1x80GB", None)).is_err());
}

#[test]
fn gpt_oss_120b_on_8x80gb_two_stages_four_replicas() {
    let p = plan("120b", &config(CFG_120B), &options("8x80GB", None)).unwrap();
    let pl = p.placement.as_ref().unwrap();
    // 1 stage: 84.28 GB (checkpointed) > 72; 2 stages without checkpointing: 18 graphs ≈ 40 GB of
    // activations on top of 30.5 GB of experts → > 72; 2 stages with: ≈ 46 GB each → fits. The
    // last stage also widens lm_head to f32 for the loss (2.3 GB), so it gets one layer fewer.
    assert_eq!(pl.kind, StrategyKind::Both);
    assert_eq!((pl.stages.len(), pl.replicas), (2, 4));
    assert!(pl.gradient_checkpointing);
    assert_eq!(pl.stages[0].layers, 0..19);
    assert_eq!(pl.stages[1].layers, 19..36);
    // stage 0 holds 19 layers of experts: 19·1_692_057_600 = 32_149_094_400
    assert_eq!(pl.stages[0].memory.experts_packed, 32_149_094_400);
    assert!(pl.peak() < 47_000_000_000 && pl.peak() > 45_000_000_000);
    assert!(plan_for_training(&config(CFG_120B), &options("8x80GB", Some(true))).is_ok());
}

#[test]
fn gpt_oss_120b_on_8x40gb_four_stages() {
    let p = plan("120b", &config(CFG_120B), &options("8x40GB", None)).unwrap();
    let pl = p.placement.as_ref().unwrap();
    // usable 36 GB; 2 stages ≈ 46 GB > 36; 4 stages of 9 layers: experts 15.2 GB + ≈ 11 GB → fits
    assert_eq!(p.usable_per_device, 36_000_000_000);
    assert_eq!((pl.stages.len(), pl.replicas), (4, 2));
    assert!(pl.gradient_checkpointing);
    assert!(pl.peak() <= 36_000_000_000);
    // 1×16GB: nothing fits; needs many devices
    let tiny = plan("120b", &config(CFG_120B), &options("1x16GB", None)).unwrap();
    assert!(!tiny.fits());
}

#[test]
fn balanced_split_minimizes_the_peak() {
    let m = model(CFG_120B);
    for stages in [2, 3, 4, 8] {
        let split = strategy::balanced(&m, stages, true);
        assert_eq!(split.len(), stages);
        assert_eq!(split[0].layers.start, 0);
        assert_eq!(split[stages - 1].layers.end, 36);
        let peak = split.iter().map(|s| s.memory.total).max().unwrap();
        // no single-layer move between neighbours lowers the peak
        for k in 0..stages - 1 {
            let (a, b) = (&split[k].layers, &split[k + 1].layers);
            for (x, y) in [
                (a.start..a.end - 1, a.end - 1..b.end),
                (a.start..a.end + 1, a.end + 1..b.end),
            ] {
                if x.is_empty() || y.is_empty() {
                    continue;
                }
                let moved = m
                    .stage(x, true, true)
                    .total
                    .max(m.stage(y, true, true).total);
                assert!(moved >= peak, "stages {stages}");
            }
        }
    }
}

#[test]
fn targets_and_rank_change_the_lora_share() {
    let c = config(CFG_20B);
    let mut o = options("1x80GB", Some(true));
    o.targets = Some(vec!["self_attn".into()]);
    // attention only: 24 · 165_888 = 3_981_312 parameters
    assert_eq!(plan("20b", &c, &o).unwrap().lora_params, 3_981_312);
    o.targets = Some(vec!["nothing_like_this".into()]);
    assert!(plan("20b", &c, &o).is_err());
    let mut o = options("1x80GB", Some(true));
    o.lora_r = 16;
    assert_eq!(plan("20b", &c, &o).unwrap().lora_params, 2 * 92_454_912);
    o.seq = 0;
    assert!(plan("20b", &c, &o).is_err());
}
