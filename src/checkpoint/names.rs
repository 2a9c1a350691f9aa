//! Tensor names of the gpt-oss release format, built in one place.
//!
//! Module paths in the model equal these names, so nothing is remapped.

/// Embedding table `[vocab, H]`.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// Final RMSNorm weight `[H]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Output projection `[vocab, H]` (untied).
pub const LM_HEAD: &str = "lm_head.weight";

/// `model.layers.{l}`.
pub fn layer(l: usize) -> String {
    format!("model.layers.{l}")
}

/// `model.layers.{l}.input_layernorm.weight`.
pub fn input_layernorm(l: usize) -> String {
    format!("{}.input_layernorm.weight", layer(l))
}

/// `model.layers.{l}.post_attention_layernorm.weight`.
pub fn post_attention_layernorm(l: usize) -> String {
    format!("{}.post_attention_layernorm.weight", layer(l))
}

/// `model.layers.{l}.self_attn`.
pub fn self_attn(l: usize) -> String {
    format!("{}.self_attn", layer(l))
}

/// The attention projections, in checkpoint order.
pub const ATTN_PROJS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// `model.layers.{l}.self_attn.{proj}.weight` (`proj` one of [`ATTN_PROJS`]).
pub fn attn_weight(l: usize, proj: &str) -> String {
    format!("{}.{proj}.weight", self_attn(l))
}

/// `model.layers.{l}.self_attn.{proj}.bias`.
pub fn attn_bias(l: usize, proj: &str) -> String {
    format!("{}.{proj}.bias", self_attn(l))
}

/// `model.layers.{l}.self_attn.sinks` `[heads]`.
pub fn attn_sinks(l: usize) -> String {
    format!("{}.sinks", self_attn(l))
}

/// `model.layers.{l}.mlp.router.weight` `[E, H]`.
pub fn router_weight(l: usize) -> String {
    format!("{}.mlp.router.weight", layer(l))
}

/// `model.layers.{l}.mlp.router.bias` `[E]`.
pub fn router_bias(l: usize) -> String {
    format!("{}.mlp.router.bias", layer(l))
}

/// `model.layers.{l}.mlp.experts`.
pub fn experts(l: usize) -> String {
    format!("{}.mlp.experts", layer(l))
}

/// `model.layers.{l}.mlp.experts.{proj}_blocks` (`proj` is `gate_up_proj` or `down_proj`).
pub fn expert_blocks(l: usize, proj: &str) -> String {
    format!("{}.{proj}_blocks", experts(l))
}

/// `model.layers.{l}.mlp.experts.{proj}_scales`.
pub fn expert_scales(l: usize, proj: &str) -> String {
    format!("{}.{proj}_scales", experts(l))
}

/// `model.layers.{l}.mlp.experts.{proj}_bias`.
pub fn expert_bias(l: usize, proj: &str) -> String {
    format!("{}.{proj}_bias", experts(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_release() {
        assert_eq!(
            attn_weight(3, "q_proj"),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(attn_sinks(0), "model.layers.0.self_attn.sinks");
        assert_eq!(
            expert_blocks(11, "gate_up_proj"),
            "model.layers.11.mlp.experts.gate_up_proj_blocks"
        );
        assert_eq!(
            expert_bias(2, "down_proj"),
            "model.layers.2.mlp.experts.down_proj_bias"
        );
        assert_eq!(router_weight(1), "model.layers.1.mlp.router.weight");
        assert_eq!(
            post_attention_layernorm(5),
            "model.layers.5.post_attention_layernorm.weight"
        );
    }
}
