//! Warnings about serving an adapter with vLLM (PEFT and this tool read it fine).
//!
//! What vLLM does, read in its source (github.com/vllm-project/vllm):
//! - Expert LoRA of a 3-D MoE model such as gpt-oss: `vllm/lora/model_manager.py`,
//!   `LoRAModelManager._stack_moe_lora_weights`, takes gate_up from `<layer>.mlp.experts.base_layer`
//!   and down_proj from `<layer>.mlp.experts` ("Handle PEFT file format where experts.base_layer is the
//!   gate_up_proj and experts is the down_proj"), then `assert gate_up_proj_lora is not None` and
//!   `assert down_proj_lora is not None` under "FIXME Edge case where LoRA is not added to gate_up_proj
//!   or down_proj". A layer with one adapted expert weight stores it under `experts.lora_*`, which vLLM
//!   reads as down_proj, and its missing `base_layer` fails the assert: vLLM cannot serve it.
//! - `vllm/config/lora.py`: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]` for
//!   `max_lora_rank`; the LoRA buffers are sized by it, and `PEFTHelper.validate_legal` compares only the
//!   config's `r` with it, so every module's rank must fit.
//! - `vllm/lora/peft_helper.py`, `PEFTHelper`: reads `r`, `lora_alpha`, `use_rslora`, `use_dora`,
//!   `modules_to_save`, `bias`, `target_modules` (its dataclass has no `rank_pattern` / `alpha_pattern`
//!   field, `from_dict` drops unknown keys) and computes one `vllm_lora_scaling_factor`, `lora_alpha /
//!   sqrt(r)` with rsLoRA else `lora_alpha / r`, which `LoRALayerWeights.from_config` gives every module
//!   (ranks come from the tensor shapes). So rsLoRA is handled; the patterns are ignored, and a module
//!   whose pattern makes its scaling differ is scaled wrong by vLLM.

use crate::adapter::LoraAdapter;
use crate::keys::{self, ExpertProj};

/// The largest `max_lora_rank` vLLM accepts (`vllm/config/lora.py`, `MaxLoRARanks`).
pub const VLLM_MAX_LORA_RANK: usize = 512;

impl LoraAdapter {
    /// Plain, human-readable warnings about serving this adapter with vLLM, and about keys whose
    /// meaning a re-save would change. Empty when there is nothing to say. Checks the tensors present
    /// (run [`validate`](Self::validate) for their consistency with the config and a base).
    pub fn serving_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.warn_single_expert_weight(&mut out);
        self.warn_rank(&mut out);
        self.warn_patterns(&mut out);
        self.warn_pattern_order(&mut out);
        out
    }

    fn warn_single_expert_weight(&self, out: &mut Vec<String>) {
        for (proj, other) in [
            (ExpertProj::GateUp, ExpertProj::Down),
            (ExpertProj::Down, ExpertProj::GateUp),
        ] {
            let layers: Vec<usize> = self
                .experts
                .keys()
                .filter(|&&(l, p)| p == proj && !self.experts.contains_key(&(l, other)))
                .map(|&(l, _)| l)
                .collect();
            if layers.is_empty() {
                continue;
            }
            out.push(format!(
                "expert LoRA on {} without {} in layer(s) {layers:?}: vLLM's fused-MoE LoRA takes \
                 gate_up_proj from `mlp.experts.base_layer` and down_proj from `mlp.experts` and asserts \
                 that both exist (vllm/lora/model_manager.py, _stack_moe_lora_weights), so vLLM cannot \
                 serve this adapter; adapt both expert weights of a layer, or merge the adapter into the \
                 base (merge-export)",
                proj.name(),
                other.name()
            ));
        }
    }

    fn warn_rank(&self, out: &mut Vec<String>) {
        let ranks = self
            .attention
            .iter()
            .map(|(&(l, p), s)| (s.r, keys::attention_module(l, p)))
            .chain(
                self.experts
                    .iter()
                    .map(|(&(l, p), s)| (s.r, keys::expert_param(l, p))),
            );
        if let Some((r, module)) = ranks.max_by_key(|(r, _)| *r) {
            if r > VLLM_MAX_LORA_RANK {
                out.push(format!(
                    "rank {r} (of `{module}`) exceeds {VLLM_MAX_LORA_RANK}, the largest max_lora_rank vLLM \
                     accepts (1, 8, 16, 32, 64, 128, 256, 320, 512; vllm/config/lora.py), so vLLM cannot \
                     serve this adapter"
                ));
            }
        }
    }

    /// Modules whose PEFT scaling (with rank_pattern / alpha_pattern) differs from vLLM's single one.
    fn warn_patterns(&self, out: &mut Vec<String>) {
        let c = &self.config;
        if c.rank_pattern.is_empty() && c.alpha_pattern.is_empty() {
            return;
        }
        let vllm = c.scaling_with(c.r, c.lora_alpha);
        let paths = self
            .attention
            .keys()
            .map(|&(l, p)| keys::attention_module(l, p))
            .chain(self.experts.keys().map(|&(l, p)| keys::expert_param(l, p)));
        let differ: Vec<(String, f64)> = paths
            .map(|p| {
                let s = c.scaling_f64_for(&p);
                (p, s)
            })
            .filter(|(_, s)| *s != vllm)
            .collect();
        if let Some((first, s)) = differ.first() {
            out.push(format!(
                "rank_pattern/alpha_pattern give {} module(s) a scaling other than lora_alpha/{}r = {vllm} \
                 (e.g. `{first}`: {s}); vLLM ignores both patterns (its PEFTHelper reads only r and \
                 lora_alpha, vllm/lora/peft_helper.py) and would scale them by {vllm}",
                differ.len(),
                if c.use_rslora { "sqrt " } else { "" }
            ));
        }
    }

    /// Overlapping pattern keys whose winner depends on their order: PEFT's save_pretrained (and
    /// this crate's `save`) write keys sorted, and PEFT reads them back in file order.
    fn warn_pattern_order(&self, out: &mut Vec<String>) {
        let c = &self.config;
        let paths: Vec<String> = self
            .attention
            .keys()
            .map(|&(l, p)| keys::attention_module(l, p))
            .chain(self.experts.keys().map(|&(l, p)| keys::expert_param(l, p)))
            .collect();
        let mut sorted = c.clone();
        sorted.rank_pattern.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.alpha_pattern.sort_by(|a, b| a.0.cmp(&b.0));
        for p in &paths {
            let (r, r2) = (c.rank_for(p), sorted.rank_for(p));
            let (a, a2) = (c.alpha_for(p), sorted.alpha_for(p));
            if (r, a) != (r2, a2) {
                out.push(format!(
                    "rank_pattern/alpha_pattern keys overlap and their order decides `{p}` (rank {r}, alpha \
                     {a} in this order; rank {r2}, alpha {a2} with the keys sorted): PEFT's save_pretrained \
                     and this tool's save write the keys sorted, so a re-saved copy {}",
                    if r != r2 {
                        "no longer loads (its tensors keep rank {r})".replace("{r}", &r.to_string())
                    } else {
                        "is scaled differently".to_string()
                    }
                ));
                return;
            }
        }
    }
}
