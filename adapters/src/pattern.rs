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

/// PEFT's `target_modules` string rule: the regex must match the whole module path.
pub fn target_regex_matches(re: &str, module_path: &str) -> bool {
    Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(module_path))
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
