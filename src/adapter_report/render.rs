//! Text rendering of an [`AdapterReport`]: facts, the coverage table, the provenance and
//! signatures, tensor norms, then warnings and errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{AdapterReport, COLUMNS};

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The coverage table: one row per layer, one column per module; `r4` adapted at rank 4, `r4×32`
/// for 32 experts of rank 4, `.` not adapted.
fn coverage(r: &AdapterReport, s: &mut String) {
    let mut cells: BTreeMap<(usize, &str), String> = BTreeMap::new();
    for m in &r.modules {
        let cell = if m.experts > 1 {
            format!("r{}×{}", m.rank, m.experts)
        } else {
            format!("r{}", m.rank)
        };
        cells.insert((m.layer, m.proj), cell);
    }
    let _ = write!(s, "{:<7}", "layer");
    for c in COLUMNS {
        let _ = write!(s, "{c:>14}");
    }
    s.push('\n');
    for l in 0..r.layers {
        let _ = write!(s, "{l:<7}");
        for c in COLUMNS {
            let cell = cells.get(&(l, c)).map_or(".", String::as_str);
            let _ = write!(s, "{cell:>14}");
        }
        s.push('\n');
    }
    let adapted = cells.len();
    let _ = writeln!(
        s,
        "{adapted} of {} modules adapted",
        r.layers * COLUMNS.len()
    );
}

fn provenance(r: &AdapterReport, s: &mut String) {
    let p = &r.provenance;
    let mut line = |k: &str, v: String| {
        let _ = writeln!(s, "{:<22}{v}", format!("{k}:"));
    };
    line(
        "provenance",
        match p.status {
            "sealed" => format!(
                "sealed, every file matches the manifest (sha256 {})",
                p.sha256.as_deref().unwrap_or("?")
            ),
            "tampered" => "TAMPERED: the files do not match the manifest".into(),
            _ => "none (made outside lora-qat)".into(),
        },
    );
    for problem in &p.problems {
        line("  problem", problem.clone());
    }
    if let Some(v) = &p.provenance {
        line(
            "  written by",
            format!(
                "{} {} ({}) at {}",
                v.tool, v.tool_version, v.origin, v.created
            ),
        );
        line(
            "  base",
            format!(
                "{} revision {} fingerprint {}",
                v.base.model_id.as_deref().unwrap_or("?"),
                v.base.revision.as_deref().unwrap_or("-"),
                v.base.fingerprint.as_deref().unwrap_or("-")
            ),
        );
        if let Some(q) = v.quantization.get("quant_cfg") {
            line("  quantization", q.to_string());
        }
        if let Some(d) = v.dataset.get("train") {
            line("  dataset (train)", d.to_string());
        }
        let t = &v.training;
        if t.is_object() {
            let keys = [
                "global_step",
                "learning_rate",
                "lora_r",
                "lora_alpha",
                "seed",
            ];
            let facts: Vec<String> = keys
                .iter()
                .filter_map(|k| t.get(*k).map(|x| format!("{k}={x}")))
                .collect();
            line("  training", facts.join(" "));
        }
        for (i, part) in v.parts.iter().enumerate() {
            line(&format!("  part {i}"), part.to_string());
        }
        for (name, f) in &v.files {
            line(
                "  file",
                format!("{name} {} bytes sha256 {}", f.bytes, f.sha256),
            );
        }
    }
    if p.signatures.is_empty() && p.status != "none" {
        line("signatures", "none".into());
    }
    for sig in &p.signatures {
        line(
            "signed by",
            format!(
                "{} ({}){}",
                sig.comment,
                sig.public_key,
                if sig.valid { "" } else { " INVALID" }
            ),
        );
    }
}

/// Human-readable rendering of the whole report.
pub fn render(r: &AdapterReport) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(s, "{:<22}{v}", format!("{k}:"));
    };
    line("adapter", r.dir.clone());
    line(
        "base model (config)",
        r.config
            .get("base_model_name_or_path")
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_string(),
    );
    line(
        "rank / alpha",
        format!(
            "r {} alpha {} ({}; scaling {})",
            r.r,
            r.lora_alpha,
            if r.use_rslora {
                "rsLoRA: alpha/√r"
            } else {
                "alpha/r"
            },
            if r.use_rslora {
                r.lora_alpha / (r.r as f64).sqrt()
            } else {
                r.lora_alpha / r.r as f64
            }
        ),
    );
    for key in ["rank_pattern", "alpha_pattern"] {
        if let Some(m) = r.config.get(key).and_then(|v| v.as_object()) {
            if !m.is_empty() {
                line(key, serde_json::to_string(m).unwrap_or_default());
            }
        }
    }
    line(
        "parameters",
        format!(
            "{} in {} tensors ({} modules)",
            r.parameters,
            r.tensors.len(),
            r.modules.len()
        ),
    );
    line(
        "weights",
        format!(
            "{} ({} bytes, {})",
            bytes(r.weights_bytes),
            r.weights_bytes,
            r.dtypes.join("/")
        ),
    );
    if let Some(b) = &r.base {
        line(
            "base",
            format!(
                "{} ({} layers), fingerprint {} [{}]",
                b.dir, b.layers, b.fingerprint, b.fingerprint_status
            ),
        );
    }
    s.push('\n');
    coverage(r, &mut s);
    s.push('\n');
    provenance(r, &mut s);
    s.push('\n');
    let _ = writeln!(
        s,
        "{:<72} {:>14} {:>12} {:>7}",
        "tensor", "l2", "max|x|", "finite"
    );
    for t in &r.tensors {
        let _ = writeln!(
            s,
            "{:<72} {:>14.6} {:>12.6} {:>7}",
            format!(
                "{} {:?}",
                t.key.trim_start_matches(adapters::PEFT_PREFIX),
                t.shape
            ),
            t.l2,
            t.max_abs,
            if t.finite { "yes" } else { "NO" }
        );
    }
    s.push('\n');
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    for w in &r.serving_warnings {
        let _ = writeln!(s, "warning (serving): {w}");
    }
    for e in &r.errors {
        let _ = writeln!(s, "error: {e}");
    }
    let _ = writeln!(
        s,
        "verdict: {}",
        if r.ok() {
            "ok".to_string()
        } else {
            format!("{} error(s)", r.errors.len())
        }
    );
    s
}
