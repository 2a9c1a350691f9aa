//! PEFT's pattern-key rule (`peft.utils.other.get_pattern_key`): the first pattern key `k` (in the config's
//! key order) such that the regex `(.*\.)?(k)$` matches the module path from its start; that is, `k` equals
//! the path or a `.`-separated suffix of it, with `k` read as a regular expression.

use regex::Regex;

/// True when PEFT's rule matches `key` against `module_path`.
pub fn matches(key: &str, module_path: &str) -> bool {
    match Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")) {
        Ok(re) => re.is_match(module_path),
        // Python-only regex syntax: fall back to the literal exact-or-suffix reading
        Err(_) => module_path == key || module_path.ends_with(&format!(".{key}")),
    }
}

/// The value of the first pattern key matching `module_path`, if any.
pub fn lookup<'a, V: 'a>(
    patterns: impl Iterator<Item = (&'a String, &'a V)>,
    module_path: &str,
) -> Option<&'a V> {
    for (k, v) in patterns {
        if matches(k, module_path) {
            return Some(v);
        }
    }
    None
}

/// PEFT's `target_modules` list rule (`check_target_module_exists`): exact name or `.`-suffix, literally.
pub fn target_list_matches(target: &str, module_path: &str) -> bool {
    module_path == target || module_path.ends_with(&format!(".{target}"))
}

/// PEFT's `target_modules` string rule (`re.fullmatch`): the regex must match the whole module path.
/// A regex this crate cannot compile matches nothing; [`check_regex`] reports it.
pub fn target_regex_matches(re: &str, module_path: &str) -> bool {
    Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(module_path))
}

/// Compiles `re` the way it is used (`wrapped` gives the full pattern), for an error message when
/// Python accepts it but Rust's `regex` cannot (look-around, backreferences).
pub fn check_regex(re: &str, wrapped: impl Fn(&str) -> String) -> Result<(), String> {
    Regex::new(&wrapped(re)).map(drop).map_err(|e| {
        format!("{re:?} is a regular expression this tool cannot evaluate (Rust regex syntax: no look-around or backreferences): {e}")
    })
}

/// The full pattern `layers_pattern` entry `p` is used in: `(?:^|.*?\.){p}\.(?P<idx>\d+)\.`, matched
/// from the start of the module path (`re.match`).
pub fn layers_pattern_regex(p: &str) -> String {
    format!(r"^(?:^|.*?\.){p}\.(\d+)\.")
}

/// The layer index PEFT's `check_target_module_exists` reads from `module_path` for
/// `layers_to_transform`: without `layers_pattern` (absent or empty) the first number that follows
/// two dotted segments (`.*?\.[^.]*\.(\d+)\.`, lazily, so `model.layers.1.mlp.experts.0.x` gives 1);
/// with patterns, the first pattern that matches gives it. `patterns` empty means no `layers_pattern`
/// (PEFT: `None`, `""` or `[]`; a list holding `""` is a pattern).
pub fn layer_index(module_path: &str, patterns: &[String]) -> Option<usize> {
    let grab = |re: &str| -> Option<usize> {
        let caps = Regex::new(re).ok()?.captures(module_path)?;
        caps.get(1)?.as_str().parse().ok()
    };
    if patterns.is_empty() {
        return grab(r"^.*?\.[^.]*\.(\d+)\.");
    }
    for p in patterns {
        let re = layers_pattern_regex(p);
        if Regex::new(&re).is_ok_and(|r| r.is_match(module_path)) {
            return grab(&re);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_pattern_rule() {
        let p = "model.layers.1.self_attn.q_proj";
        assert!(matches("q_proj", p));
        assert!(matches("self_attn.q_proj", p));
        assert!(matches(p, p));
        assert!(matches(r"layers\.1\..*q_proj", p));
        assert!(!matches("_proj", p), "suffix must start at a '.' boundary");
        assert!(!matches("layers.1", p));
        assert!(!matches("layers.11.self_attn.q_proj", p));
        assert!(!matches("ayers.1.self_attn.q_proj", p));
        // a regex dot matches any char, as in PEFT
        assert!(matches("self_attn.q.proj", p));
    }

    #[test]
    fn layer_index_like_peft() {
        let none: Vec<String> = vec![];
        assert_eq!(
            layer_index("model.layers.12.self_attn.q_proj", &none),
            Some(12)
        );
        assert_eq!(
            layer_index("model.layers.1.mlp.experts.0.w", &none),
            Some(1)
        );
        assert_eq!(layer_index("lm_head", &none), None);
        assert_eq!(
            layer_index("model.layers.3", &none),
            None,
            "needs a dot after the index"
        );
        let layers = vec!["layers".to_string()];
        assert_eq!(
            layer_index("model.layers.3.self_attn.q_proj", &layers),
            Some(3)
        );
        let model = vec!["model".to_string()];
        assert_eq!(layer_index("model.layers.3.self_attn.q_proj", &model), None);
        let two = vec!["blocks".to_string(), "layers".to_string()];
        assert_eq!(
            layer_index("model.layers.2.self_attn.v_proj", &two),
            Some(2)
        );
        // a list holding "" is a pattern (that needs `..`), not the default rule
        assert_eq!(layer_index("model.layers.2.x", &[String::new()]), None);
    }

    #[test]
    fn first_key_wins() {
        let pats = [
            ("k_proj".to_string(), 2usize),
            ("q_proj".to_string(), 3),
            ("proj".to_string(), 9),
        ];
        let got = lookup(
            pats.iter().map(|(k, v)| (k, v)),
            "model.layers.0.self_attn.q_proj",
        );
        assert_eq!(got, Some(&3));
        assert_eq!(
            lookup(
                pats.iter().map(|(k, v)| (k, v)),
                "model.layers.0.mlp.router"
            ),
            None
        );
    }
}
