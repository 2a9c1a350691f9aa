//! `adapters::combine`: the combined adapter's ΔW per module is Σ s_i·B_i·A_i up to the one f32 rounding of
//! s·B (checked against a plain f64 product written here), for the two fixture adapters (PEFT-written,
//! different ranks, alphas, rsLoRA, a rank_pattern, a subset of modules, a layer with one expert
//! weight) and for in-memory parts; the per-expert interleaving; the config (r, patterns, targets,
//! scaling 1); keys; round trip through disk; refusals.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adapters::combine::{combine, combine_dirs, CombineDirsError, CombineError};
use adapters::{
    attention_key, attention_module, expert_key, expert_param, AdapterConfig, AttnProj, ExpertProj,
    Factor, LoraAdapter, TargetModules,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-gpt-oss")
        .join(name)
}

/// Plain f64 `s·B·A`: `b` is `[out, r]`, `a` is `[r, in]`, result `[out, in]`; with the rounding bound
/// `2⁻²⁴·Σ_j |s·B[o,j]|·|A[j,i]|` of the one f32 rounding of s·B.
fn delta_f64(
    a: &[f32],
    b: &[f32],
    r: usize,
    n_in: usize,
    n_out: usize,
    s: f32,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), r * n_in);
    assert_eq!(b.len(), n_out * r);
    let mut d = vec![0.0f64; n_out * n_in];
    let mut bound = vec![0.0f64; n_out * n_in];
    let s = s as f64;
    for o in 0..n_out {
        for j in 0..r {
            let sb = s * b[o * r + j] as f64;
            for i in 0..n_in {
                let ai = a[j * n_in + i] as f64;
                d[o * n_in + i] += sb * ai;
                bound[o * n_in + i] += (sb * ai).abs() * f64::from(f32::EPSILON) / 2.0;
            }
        }
    }
    (d, bound)
}

/// The reference ΔW (and rounding bound) of a module: Σ over the parts that adapt it.
#[derive(Default)]
struct Reference {
    delta: Vec<f64>,
    bound: Vec<f64>,
}

impl Reference {
    fn add(&mut self, (d, b): (Vec<f64>, Vec<f64>)) {
        if self.delta.is_empty() {
            self.delta = vec![0.0; d.len()];
            self.bound = vec![0.0; d.len()];
        }
        for (acc, x) in self.delta.iter_mut().zip(&d) {
            *acc += x;
        }
        for (acc, x) in self.bound.iter_mut().zip(&b) {
            *acc += x;
        }
    }
}

/// Asserts the combined module's ΔW (f64 product of its f32 factors, scaling 1) equals the reference within
/// the rounding bound; returns the largest |diff|.
fn assert_close(what: &str, got: &[f64], want: &Reference) -> f64 {
    assert_eq!(got.len(), want.delta.len(), "{what}: size");
    let mut worst = 0.0f64;
    for (k, (g, (w, bound))) in got
        .iter()
        .zip(want.delta.iter().zip(&want.bound))
        .enumerate()
    {
        let diff = (g - w).abs();
        // the f64 products and sums on both sides add ~1e-16 relative, far below the f32 bound
        let tol = bound * (1.0 + 1e-6);
        assert!(
            diff <= tol,
            "{what}[{k}]: combined {g} vs Σ s·B·A {w} (diff {diff:e} > bound {tol:e})"
        );
        worst = worst.max(diff);
    }
    worst
}

/// Checks every module of `combined` against Σ over `parts`; returns (modules checked, worst diff).
fn check_sum(parts: &[&LoraAdapter], combined: &LoraAdapter) -> (usize, f64) {
    let mut worst = 0.0f64;
    let mut n = 0;
    let mut attn: Vec<(usize, AttnProj)> =
        parts.iter().flat_map(|p| p.attention_modules()).collect();
    attn.sort();
    attn.dedup();
    assert_eq!(
        combined.attention_modules().collect::<Vec<_>>(),
        attn,
        "the combination adapts exactly the union of the attention modules"
    );
    for &(l, p) in &attn {
        let mut want = Reference::default();
        for part in parts {
            if let Some(x) = part.attention(l, p) {
                want.add(delta_f64(
                    x.a,
                    x.b,
                    x.r,
                    x.in_features,
                    x.out_features,
                    x.scale,
                ));
            }
        }
        let c = combined.attention(l, p).unwrap();
        assert_eq!(c.scale, 1.0, "combined scaling of {l} {p:?}");
        let (got, _) = delta_f64(c.a, c.b, c.r, c.in_features, c.out_features, c.scale);
        worst = worst.max(assert_close(&attention_module(l, p), &got, &want));
        n += 1;
    }
    let mut exp: Vec<(usize, ExpertProj)> = parts.iter().flat_map(|p| p.expert_modules()).collect();
    exp.sort();
    exp.dedup();
    assert_eq!(combined.expert_modules().collect::<Vec<_>>(), exp);
    for &(l, p) in &exp {
        let c = combined.experts(l, p).unwrap();
        assert_eq!(c.scale, 1.0, "combined scaling of {l} {p:?}");
        for e in 0..c.experts {
            let mut want = Reference::default();
            for part in parts {
                if let Some(x) = part.experts(l, p) {
                    let b = x.expert_b(e);
                    want.add(delta_f64(
                        x.expert_a(e),
                        &b,
                        x.r,
                        x.in_features,
                        x.out_features,
                        x.scale,
                    ));
                }
            }
            let b = c.expert_b(e);
            let (got, _) = delta_f64(
                c.expert_a(e),
                &b,
                c.r,
                c.in_features,
                c.out_features,
                c.scale,
            );
            worst = worst.max(assert_close(
                &format!("{} expert {e}", expert_param(l, p)),
                &got,
                &want,
            ));
        }
        n += 1;
    }
    (n, worst)
}

/// Exactly the interleaving: combined expert e's A is the parts' A_e stacked, its B row o the parts' s·B_e rows.
fn check_interleaving(parts: &[&LoraAdapter], combined: &LoraAdapter) {
    for (l, p) in combined.expert_modules() {
        let c = combined.experts(l, p).unwrap();
        let present: Vec<_> = parts.iter().filter_map(|x| x.experts(l, p)).collect();
        assert_eq!(c.r, present.iter().map(|x| x.r).sum::<usize>());
        for e in 0..c.experts {
            let want_a: Vec<f32> = present
                .iter()
                .flat_map(|x| x.expert_a(e).to_vec())
                .collect();
            assert_eq!(
                c.expert_a(e),
                want_a.as_slice(),
                "layer {l} {p:?} expert {e}: A"
            );
            let cb = c.expert_b(e);
            for o in 0..c.out_features {
                let want_row: Vec<f32> = present
                    .iter()
                    .flat_map(|x| {
                        let b = x.expert_b(e);
                        b[o * x.r..(o + 1) * x.r]
                            .iter()
                            .map(|v| x.scale * v)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                assert_eq!(
                    &cb[o * c.r..(o + 1) * c.r],
                    want_row.as_slice(),
                    "layer {l} {p:?} expert {e}: B row {o}"
                );
            }
        }
    }
}

/// Checks the config rules: scaling 1 everywhere, r/alpha, a pattern entry exactly for the modules whose
/// rank differs from r, targets listing exactly the adapted modules by full path.
fn check_config(combined: &LoraAdapter) {
    let cfg = combined.config();
    assert!(!cfg.use_rslora);
    assert_eq!(cfg.lora_alpha, cfg.r as f64);
    let mut paths_attn = Vec::new();
    let mut ranks = Vec::new();
    for (l, p) in combined.attention_modules() {
        let path = attention_module(l, p);
        ranks.push((path.clone(), combined.attention(l, p).unwrap().r));
        paths_attn.push(path);
    }
    let mut paths_exp = Vec::new();
    for (l, p) in combined.expert_modules() {
        let path = expert_param(l, p);
        ranks.push((path.clone(), combined.experts(l, p).unwrap().r));
        paths_exp.push(path);
    }
    assert_eq!(cfg.target_modules, Some(TargetModules::List(paths_attn)));
    assert_eq!(cfg.target_parameters, Some(paths_exp));
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for (path, r) in &ranks {
        assert_eq!(cfg.rank_for(path), *r, "{path}");
        assert_eq!(cfg.scaling_for(path), 1.0, "{path}");
        *count.entry(*r).or_default() += 1;
    }
    let best = count.values().max().unwrap();
    let want_r = count
        .iter()
        .filter(|(_, n)| *n == best)
        .map(|(r, _)| *r)
        .max()
        .unwrap();
    assert_eq!(
        cfg.r, want_r,
        "r is the most common rank (the larger on a tie)"
    );
    let odd: Vec<String> = ranks
        .iter()
        .filter(|(_, r)| *r != cfg.r)
        .map(|(p, _)| regex_escape(p))
        .collect();
    let pat: Vec<String> = cfg.rank_pattern.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        pat, odd,
        "one exact-path rank_pattern entry per module whose rank differs, in module order"
    );
    let apat: Vec<String> = cfg.alpha_pattern.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(apat, odd);
    for ((_, r), (_, a)) in cfg.rank_pattern.iter().zip(&cfg.alpha_pattern) {
        assert_eq!(*a, *r as f64);
    }
}

fn regex_escape(p: &str) -> String {
    p.replace('.', r"\.")
}

#[test]
fn fixture_adapters_sum_exactly() {
    let a = LoraAdapter::load(&fixture("adapter")).unwrap();
    let b = LoraAdapter::load(&fixture("adapter_b")).unwrap();
    // what the fixture must exercise
    assert!(b.config().use_rslora && b.config().r == 2);
    assert_eq!(
        b.attention(1, AttnProj::Q).unwrap().r,
        3,
        "adapter_b's rank_pattern"
    );
    assert!(b.experts(3, ExpertProj::GateUp).is_some() && b.experts(3, ExpertProj::Down).is_none());
    assert!(b.attention(0, AttnProj::K).is_none());

    let c = combine(&[&a, &b]).unwrap();
    let (n, worst) = check_sum(&[&a, &b], &c.adapter);
    assert_eq!(n, 16 + 6);
    eprintln!("fixture: {n} modules, max |ΔW_C − Σ s·B·A| = {worst:e}");
    check_interleaving(&[&a, &b], &c.adapter);
    check_config(&c.adapter);

    // the numbers of this fixture: q 6 (layer 1: 4 + 3 = 7), v 6, k/o 4, experts 6 where b adapts them, else 4
    let cfg = c.adapter.config();
    assert_eq!(cfg.r, 4);
    assert_eq!(cfg.rank_for("model.layers.1.self_attn.q_proj"), 7);
    assert_eq!(cfg.rank_for("model.layers.2.self_attn.v_proj"), 6);
    assert_eq!(cfg.rank_for("model.layers.2.self_attn.k_proj"), 4);
    assert_eq!(cfg.rank_for("model.layers.3.mlp.experts.gate_up_proj"), 6);
    assert_eq!(cfg.rank_for("model.layers.3.mlp.experts.down_proj"), 4);
    assert_eq!(cfg.rank_pattern.len(), 11);
    assert_eq!(cfg.base_model_name_or_path.as_deref(), Some("tiny-gpt-oss"));
    assert_eq!(c.summary.parts, 2);
    assert_eq!(c.summary.modules.len(), 22);
    assert_eq!(c.summary.max_rank, 7);
    assert_eq!(
        c.summary.total_rank,
        c.summary.modules.iter().map(|m| m.rank).sum::<usize>()
    );

    // layer 3: adapter_b's gate_up was under `experts.lora_*`; in the combination both are adapted
    let names: Vec<&str> = c.adapter.tensors().map(|t| t.0).collect();
    let gu = expert_key(3, ExpertProj::GateUp, true, Factor::A);
    assert!(gu.contains(".experts.base_layer.lora_A"), "{gu}");
    assert!(names.contains(&gu.as_str()));
    assert!(names.contains(&expert_key(3, ExpertProj::Down, true, Factor::B).as_str()));
    let shapes: BTreeMap<&str, Vec<usize>> = c
        .adapter
        .tensors()
        .map(|(k, s, _)| (k, s.to_vec()))
        .collect();
    assert_eq!(shapes[gu.as_str()], vec![6 * 8, 64]);
    assert_eq!(
        shapes[attention_key(1, AttnProj::Q, Factor::B).as_str()],
        vec![96, 7]
    );

    // through disk: the saved directory reads back to the same adapter (keys attributed by the config)
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    c.adapter.save(&out, false).unwrap();
    let back = LoraAdapter::load(&out).unwrap();
    assert_eq!(back.config().to_json(), c.adapter.config().to_json());
    let t1: Vec<_> = back.tensors().collect();
    let t2: Vec<_> = c.adapter.tensors().collect();
    assert_eq!(t1, t2);
    check_sum(&[&a, &b], &back);

    // combine_dirs gives the same, and the order of the parts only permutes ranks
    let d = combine_dirs(&[&fixture("adapter"), &fixture("adapter_b")]).unwrap();
    assert_eq!(d.adapter.tensors().collect::<Vec<_>>(), t2);
    let rev = combine(&[&b, &a]).unwrap();
    check_sum(&[&b, &a], &rev.adapter);
    check_interleaving(&[&b, &a], &rev.adapter);
}

#[test]
fn three_parts_and_a_repeated_part() {
    let a = LoraAdapter::load(&fixture("adapter")).unwrap();
    let b = LoraAdapter::load(&fixture("adapter_b")).unwrap();
    let c = combine(&[&a, &b, &a]).unwrap();
    check_sum(&[&a, &b, &a], &c.adapter);
    check_interleaving(&[&a, &b, &a], &c.adapter);
    check_config(&c.adapter);
    assert_eq!(
        c.adapter
            .config()
            .rank_for("model.layers.1.self_attn.q_proj"),
        11
    );
    // a combination can itself be combined
    let cc = combine(&[&c.adapter, &b]).unwrap();
    check_sum(&[&a, &b, &a, &b], &cc.adapter);
}

// ------------------------------------------------------------------------------------------------
// in-memory parts

/// Deterministic values in (-0.5, 0.5).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

const HIDDEN: usize = 8;
const Q_OUT: usize = 12;
const INTER: usize = 5;
const EXPERTS: usize = 3;

fn attn_dims(p: AttnProj, hidden: usize) -> (usize, usize) {
    match p {
        AttnProj::Q => (hidden, Q_OUT),
        AttnProj::K | AttnProj::V => (hidden, 4),
        AttnProj::O => (Q_OUT, hidden),
    }
}

fn exp_dims(p: ExpertProj, hidden: usize) -> (usize, usize) {
    match p {
        ExpertProj::GateUp => (hidden, 2 * INTER),
        ExpertProj::Down => (INTER, hidden),
    }
}

/// An in-memory adapter: rank `r` (or the rank from `config`'s patterns), random factors.
struct Spec {
    attn: Vec<(usize, AttnProj)>,
    experts: Vec<(usize, ExpertProj)>,
    hidden: usize,
    n_experts: usize,
    seed: u64,
}

impl Spec {
    fn new(attn: &[(usize, AttnProj)], experts: &[(usize, ExpertProj)], seed: u64) -> Self {
        Spec {
            attn: attn.to_vec(),
            experts: experts.to_vec(),
            hidden: HIDDEN,
            n_experts: EXPERTS,
            seed,
        }
    }

    fn config(&self, r: usize, alpha: f64) -> AdapterConfig {
        let tm = self
            .attn
            .iter()
            .map(|&(l, p)| attention_module(l, p))
            .collect();
        let tp = self
            .experts
            .iter()
            .map(|&(l, p)| expert_param(l, p))
            .collect();
        AdapterConfig::new_gpt_oss(r, alpha, tm, tp)
    }

    fn build(&self, config: AdapterConfig) -> LoraAdapter {
        let mut rng = Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut t = Vec::new();
        for &(l, p) in &self.attn {
            let r = config.rank_for(&attention_module(l, p));
            let (i, o) = attn_dims(p, self.hidden);
            t.push((attention_key(l, p, Factor::A), vec![r, i], rng.vec(r * i)));
            t.push((attention_key(l, p, Factor::B), vec![o, r], rng.vec(o * r)));
        }
        for &(l, p) in &self.experts {
            let both = self.experts.contains(&(l, ExpertProj::GateUp))
                && self.experts.contains(&(l, ExpertProj::Down));
            let r = config.rank_for(&expert_param(l, p));
            let (i, o) = exp_dims(p, self.hidden);
            let re = r * self.n_experts;
            t.push((
                expert_key(l, p, both, Factor::A),
                vec![re, i],
                rng.vec(re * i),
            ));
            t.push((
                expert_key(l, p, both, Factor::B),
                vec![o, re],
                rng.vec(o * re),
            ));
        }
        LoraAdapter::from_parts(config, t).unwrap()
    }
}

use AttnProj::{K, O, Q, V};
use ExpertProj::{Down, GateUp};

#[test]
fn rank_patterns_of_the_parts_and_of_the_combination() {
    // part 1: r 2 / alpha 4, but every layer-1 module rank 5 / alpha 3 (a regex pattern), and one module
    // rank 1 by exact path listed first (PEFT takes the first match)
    let s1 = Spec::new(
        &[(0, Q), (0, V), (1, Q), (1, O)],
        &[(0, GateUp), (0, Down), (1, Down)],
        1,
    );
    let mut c1 = s1.config(2, 4.0);
    c1.rank_pattern = vec![(r"layers\.1\..*".into(), 5)];
    c1.alpha_pattern = vec![(r"layers\.1\..*".into(), 3.0)];
    c1.set_module_rank("model.layers.1.self_attn.o_proj", 1, 7.0);
    let p1 = s1.build(c1);
    assert_eq!(p1.attention(1, Q).unwrap().r, 5);
    assert_eq!(p1.attention(1, O).unwrap().r, 1);
    assert_eq!(p1.experts(1, Down).unwrap().r, 5);
    // part 2: rsLoRA, r 3, alpha 2
    let s2 = Spec::new(&[(0, Q), (1, O), (2, K)], &[(0, GateUp), (1, Down)], 2);
    let mut c2 = s2.config(3, 2.0);
    c2.use_rslora = true;
    let p2 = s2.build(c2);
    assert!((p2.attention(0, Q).unwrap().scale - 2.0 / 3f32.sqrt()).abs() < 1e-6);

    let c = combine(&[&p1, &p2]).unwrap();
    check_sum(&[&p1, &p2], &c.adapter);
    check_interleaving(&[&p1, &p2], &c.adapter);
    check_config(&c.adapter);
    let cfg = c.adapter.config();
    // totals: 0.q 5, 0.v 2, 1.q 5, 1.o 4, 2.k 3, 0.gate_up 5, 0.down 2, 1.down 8: r = 5 (three times)
    assert_eq!(cfg.r, 5);
    assert_eq!(cfg.rank_for("model.layers.1.self_attn.o_proj"), 4);
    assert_eq!(cfg.rank_for("model.layers.1.mlp.experts.down_proj"), 8);
    assert_eq!(cfg.rank_pattern.len(), 5);
    assert!(
        cfg.rank_pattern
            .iter()
            .all(|(k, _)| k.starts_with(r"model\.layers\.")),
        "only exact paths: {:?}",
        cfg.rank_pattern
    );

    // all modules of equal total rank: no pattern
    let s3 = Spec::new(&[(0, Q), (0, K)], &[(2, GateUp), (2, Down)], 3);
    let p3 = s3.build(s3.config(2, 1.0));
    let s4 = Spec::new(&[(0, Q), (0, K)], &[(2, GateUp), (2, Down)], 4);
    let p4 = s4.build(s4.config(3, 9.0));
    let c = combine(&[&p3, &p4]).unwrap();
    check_sum(&[&p3, &p4], &c.adapter);
    assert_eq!(c.adapter.config().r, 5);
    assert!(c.adapter.config().rank_pattern.is_empty());
    assert!(c.adapter.config().alpha_pattern.is_empty());

    // a tie: two modules of rank 3, two of rank 6 -> r = 6
    let s5 = Spec::new(&[(0, Q), (0, K), (0, V), (0, O)], &[], 5);
    let p5 = s5.build(s5.config(3, 3.0));
    let s6 = Spec::new(&[(0, V), (0, O)], &[], 6);
    let p6 = s6.build(s6.config(3, 6.0));
    let c = combine(&[&p5, &p6]).unwrap();
    check_sum(&[&p5, &p6], &c.adapter);
    check_config(&c.adapter);
    assert_eq!(c.adapter.config().r, 6);
    assert_eq!(c.summary.rank_pattern_entries, 2);
    assert_eq!(c.adapter.config().target_parameters, Some(vec![]));
}

#[test]
fn expert_keys_follow_the_combination() {
    // each part adapts one expert weight of layer 0 (both under `experts.lora_*` in their own files); the
    // combination adapts both, so gate_up moves under `experts.base_layer`
    let s1 = Spec::new(&[], &[(0, GateUp)], 7);
    let p1 = s1.build(s1.config(2, 2.0));
    let s2 = Spec::new(&[], &[(0, Down), (4, Down)], 8);
    let p2 = s2.build(s2.config(1, 3.0));
    let own: Vec<&str> = p1.tensors().map(|t| t.0).collect();
    assert_eq!(
        own[0],
        "base_model.model.model.layers.0.mlp.experts.lora_A.weight"
    );
    let c = combine(&[&p1, &p2]).unwrap();
    check_sum(&[&p1, &p2], &c.adapter);
    check_interleaving(&[&p1, &p2], &c.adapter);
    check_config(&c.adapter);
    let keys: BTreeMap<String, Vec<usize>> = c
        .adapter
        .tensors()
        .map(|(k, s, _)| (k.to_string(), s.to_vec()))
        .collect();
    let want: BTreeMap<String, Vec<usize>> = [
        (
            "model.layers.0.mlp.experts.base_layer.lora_A.weight",
            vec![2 * EXPERTS, HIDDEN],
        ),
        (
            "model.layers.0.mlp.experts.base_layer.lora_B.weight",
            vec![2 * INTER, 2 * EXPERTS],
        ),
        (
            "model.layers.0.mlp.experts.lora_A.weight",
            vec![EXPERTS, INTER],
        ),
        (
            "model.layers.0.mlp.experts.lora_B.weight",
            vec![HIDDEN, EXPERTS],
        ),
        (
            "model.layers.4.mlp.experts.lora_A.weight",
            vec![EXPERTS, INTER],
        ),
        (
            "model.layers.4.mlp.experts.lora_B.weight",
            vec![HIDDEN, EXPERTS],
        ),
    ]
    .into_iter()
    .map(|(k, s)| (format!("base_model.model.{k}"), s))
    .collect();
    assert_eq!(keys, want);
    // the values did not move with the key: gate_up's combined factors are part 1's (B scaled by 1)
    let g = c.adapter.experts(0, GateUp).unwrap();
    let g1 = p1.experts(0, GateUp).unwrap();
    assert_eq!(g.a, g1.a);
    assert_eq!(g.b, g1.b);
    let d = c.adapter.experts(0, Down).unwrap();
    let d2 = p2.experts(0, Down).unwrap();
    assert_eq!(d.a, d2.a);
    assert_eq!(
        d.b,
        d2.b.iter().map(|v| 3.0 * v).collect::<Vec<_>>().as_slice()
    );
    // and it survives a save/load (the nesting is decoded from target_parameters)
    let dir = tempfile::tempdir().unwrap();
    c.adapter.save(&dir.path().join("c"), false).unwrap();
    let back = LoraAdapter::load(&dir.path().join("c")).unwrap();
    check_sum(&[&p1, &p2], &back);
}

#[test]
fn disjoint_parts_keep_their_own_factors() {
    let s1 = Spec::new(&[(0, Q), (1, K)], &[], 9);
    let p1 = s1.build(s1.config(2, 8.0));
    let s2 = Spec::new(&[], &[(0, GateUp), (0, Down)], 10);
    let p2 = s2.build(s2.config(4, 4.0));
    let c = combine(&[&p1, &p2]).unwrap();
    check_sum(&[&p1, &p2], &c.adapter);
    check_config(&c.adapter);
    let q = c.adapter.attention(0, Q).unwrap();
    let q1 = p1.attention(0, Q).unwrap();
    assert_eq!(q.a, q1.a);
    assert_eq!(
        q.b,
        q1.b.iter().map(|v| 4.0 * v).collect::<Vec<_>>().as_slice()
    );
    assert_eq!(
        c.adapter.experts(0, Down).unwrap().b,
        p2.experts(0, Down).unwrap().b
    );
    assert_eq!(
        c.summary
            .modules
            .iter()
            .map(|m| m.part_ranks.clone())
            .collect::<Vec<_>>(),
        vec![vec![2, 0], vec![2, 0], vec![0, 4], vec![0, 4]]
    );
}

// ------------------------------------------------------------------------------------------------
// refusals

#[test]
fn refuses_fewer_than_two_parts() {
    let a = LoraAdapter::load(&fixture("adapter")).unwrap();
    let e = combine(&[&a]).unwrap_err();
    assert!(matches!(e, CombineError::TooFewParts { got: 1 }), "{e}");
    assert!(combine(&[]).is_err());
}

#[test]
fn refuses_parts_of_different_bases() {
    let s1 = Spec::new(&[(0, Q), (1, V)], &[(0, GateUp)], 11);
    let p1 = s1.build(s1.config(2, 2.0));
    // hidden size 16 instead of 8: in_features of q_proj differ
    let mut s2 = Spec::new(&[(1, V)], &[], 12);
    s2.hidden = 16;
    let p2 = s2.build(s2.config(3, 2.0));
    let e = combine(&[&p1, &p2]).unwrap_err().to_string();
    for needle in [
        "part 2",
        "part 1",
        "model.layers.1.self_attn.v_proj",
        "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
        "lora_A [3, 16] / lora_B [4, 3]",
        "lora_A [2, 8] / lora_B [4, 2]",
        "in_features 16 vs 8",
        "different bases",
    ] {
        assert!(e.contains(needle), "{needle:?} not in: {e}");
    }
    // different number of experts
    let mut s3 = Spec::new(&[], &[(0, GateUp), (0, Down)], 13);
    s3.n_experts = 4;
    let p3 = s3.build(s3.config(2, 2.0));
    let e = combine(&[&p1, &p3]).unwrap_err().to_string();
    assert!(e.contains("4 experts vs 3"), "{e}");
    assert!(
        e.contains("experts.base_layer.lora_A.weight"),
        "the part's own key: {e}"
    );
    assert!(e.contains("lora_A [8, 8] / lora_B [10, 8]"), "{e}");
}

#[test]
fn refuses_parts_naming_different_base_models() {
    let s = Spec::new(&[(0, Q)], &[], 14);
    let mut c1 = s.config(2, 2.0);
    c1.base_model_name_or_path = Some("openai/gpt-oss-20b".into());
    let mut c2 = s.config(2, 2.0);
    c2.base_model_name_or_path = Some("openai/gpt-oss-120b".into());
    let (p1, p2) = (s.build(c1.clone()), s.build(c2));
    let e = combine(&[&p1, &p2]).unwrap_err().to_string();
    assert!(
        e.contains("openai/gpt-oss-20b") && e.contains("openai/gpt-oss-120b"),
        "{e}"
    );
    assert!(
        e.contains("base_model_name_or_path") && e.contains("part 2"),
        "{e}"
    );

    // revisions
    let mut c3 = c1.clone();
    c3.revision = Some("abc".into());
    let mut c4 = c1.clone();
    c4.revision = Some("def".into());
    let e = combine(&[&s.build(c3.clone()), &s.build(c4)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("revision") && e.contains("abc") && e.contains("def"),
        "{e}"
    );

    // agreeing (or silent) parts keep the base
    let p_none = s.build(s.config(2, 2.0));
    let c = combine(&[&s.build(c3.clone()), &p_none, &s.build(c3)]).unwrap();
    let cfg = c.adapter.config();
    assert_eq!(
        cfg.base_model_name_or_path.as_deref(),
        Some("openai/gpt-oss-20b")
    );
    assert_eq!(cfg.revision.as_deref(), Some("abc"));
}

#[test]
fn refuses_a_scaled_factor_that_overflows() {
    let s = Spec::new(&[(0, Q)], &[], 15);
    let p1 = s.build(s.config(2, 2.0));
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = p1
        .tensors()
        .map(|(k, sh, d)| (k.to_string(), sh.to_vec(), d.to_vec()))
        .collect();
    t.iter_mut().find(|x| x.0.contains("lora_B")).unwrap().2[5] = 3.0e38;
    let p2 = LoraAdapter::from_parts(s.config(2, 8.0), t).unwrap();
    let e = combine(&[&p1, &p2]).unwrap_err().to_string();
    assert!(
        e.contains("part 2") && e.contains("q_proj.lora_B.weight") && e.contains("index 5"),
        "{e}"
    );
}

#[test]
fn combine_dirs_names_the_unreadable_part() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = combine_dirs(&[&fixture("adapter"), &missing]).unwrap_err();
    assert!(matches!(e, CombineDirsError::Load { index: 2, .. }), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
}
