//! The printed plan (`impl Display for Plan`): the run, one replica's bytes with and without
//! gradient checkpointing, the strategy and why, the bytes of every device, the fullest device's
//! activation and transient parts, or the refusal with what would help.

use std::fmt::{self, Write as _};

use super::memory::Breakdown;
use super::{Plan, GB};

fn gb(b: u64) -> String {
    format!("{:.2}", b as f64 / GB as f64)
}

/// Rows of the per-device table: label and value.
fn rows(b: &Breakdown) -> [(&'static str, String); 6] {
    [
        ("packed experts (MXFP4 blocks+scales)", gb(b.experts_packed)),
        ("non-expert weights (as held)", gb(b.non_expert_held)),
        (
            "  [as stored, all bf16; not counted]",
            gb(b.non_expert_bf16),
        ),
        ("LoRA param+grad+AdamW m,v (f32)", gb(b.lora_state)),
        ("activations", gb(b.activations)),
        ("transient buffers", gb(b.transient)),
    ]
}

fn table(
    f: &mut fmt::Formatter<'_>,
    heads: &[String],
    cols: &[&Breakdown],
    usable: u64,
) -> fmt::Result {
    let w = 38;
    let mut line = format!("  {:<w$}", "GB");
    for h in heads {
        let _ = write!(line, "{h:>16}");
    }
    writeln!(f, "{line}")?;
    let all: Vec<[(&str, String); 6]> = cols.iter().map(|b| rows(b)).collect();
    for i in 0..6 {
        let mut line = format!("  {:<w$}", all[0][i].0);
        for r in &all {
            let _ = write!(line, "{:>16}", r[i].1);
        }
        writeln!(f, "{line}")?;
    }
    let mut total = format!("  {:<w$}", "total");
    let mut cap = format!("  {:<w$}", "usable");
    let mut free = format!("  {:<w$}", "free (negative: over)");
    for b in cols {
        let _ = write!(total, "{:>16}", gb(b.total));
        let _ = write!(cap, "{:>16}", gb(usable));
        let left = usable as f64 - b.total as f64;
        let _ = write!(free, "{:>16}", format!("{:.2}", left / GB as f64));
    }
    writeln!(f, "{total}")?;
    writeln!(f, "{cap}")?;
    writeln!(f, "{free}")
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [layers, experts, top_k, h, i, heads, kv, d, vocab] = self.architecture;
        writeln!(
            f,
            "base: {} — {layers} layers, {experts} experts (top-{top_k}), hidden {h}, intermediate {i}, \
             {heads} heads × {d} ({kv} kv heads), vocab {vocab}",
            self.base
        )?;
        writeln!(
            f,
            "run: seq {} × batch {}, LoRA r={} ({}), {} trainable parameters; cross-entropy chunks of {} rows",
            self.seq,
            self.batch,
            self.lora_r,
            if self.qat { "QAT: deployed MXFP4 experts, bf16 attention" } else { "plain LoRA" },
            self.lora_params,
            self.ce_chunk_rows
        )?;
        writeln!(f, "devices: {}", self.devices)?;
        writeln!(
            f,
            "usable: {} GB per device ({:.0}% headroom kept for allocator fragmentation and the CUDA \
             context); units: GB = 10^9 bytes",
            gb(self.usable_per_device),
            self.headroom * 100.0
        )?;
        writeln!(f)?;
        writeln!(f, "one whole replica on one device:")?;
        let heads_ = ["no ckpt".to_string(), "grad ckpt".to_string()];
        table(
            f,
            &heads_,
            &[&self.replica[0], &self.replica[1]],
            self.usable_per_device,
        )?;
        writeln!(f)?;
        let Some(p) = &self.placement else {
            writeln!(f, "verdict: DOES NOT FIT")?;
            writeln!(f, "why: {}", self.reason)?;
            if let Some(r) = &self.refusal {
                writeln!(
                    f,
                    "needed {} GB per device, available {} GB",
                    gb(r.needed),
                    gb(r.available)
                )?;
                writeln!(f, "what would help:")?;
                for s in &r.suggestions {
                    writeln!(f, "  - {s}")?;
                }
            }
            return Ok(());
        };
        writeln!(
            f,
            "verdict: FITS — strategy: {} ({} replica(s) × {} stage(s) = {} of {} devices), \
             gradient checkpointing {}",
            p.kind.label(),
            p.replicas,
            p.stages.len(),
            p.devices_used(),
            self.devices.count,
            if p.gradient_checkpointing {
                "on"
            } else {
                "off"
            }
        )?;
        writeln!(f, "why: {}", self.reason)?;
        writeln!(f)?;
        writeln!(f, "per device (every replica has the same stages):")?;
        let heads: Vec<String> = p
            .stages
            .iter()
            .enumerate()
            .map(|(k, s)| format!("dev {k}: L{}-{}", s.layers.start, s.layers.end - 1))
            .collect();
        let cols: Vec<&Breakdown> = p.stages.iter().map(|s| &s.memory).collect();
        table(f, &heads, &cols, self.usable_per_device)?;
        if let Some(s) = p.peak_stage() {
            writeln!(f)?;
            writeln!(
                f,
                "fullest device (layers {}-{}{}{}), parts in GB:",
                s.layers.start,
                s.layers.end - 1,
                if s.embed { ", embedding" } else { "" },
                if s.head {
                    ", final norm + lm_head + loss"
                } else {
                    ""
                }
            )?;
            for part in s.memory.activation_parts.iter() {
                writeln!(f, "  activations: {:<40}{:>9}", part.name, gb(part.bytes))?;
            }
            for part in s.memory.transient_parts.iter() {
                writeln!(f, "  transient:   {:<40}{:>9}", part.name, gb(part.bytes))?;
            }
        }
        Ok(())
    }
}
