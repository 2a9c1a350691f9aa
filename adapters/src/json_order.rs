//! The file order of the `rank_pattern` / `alpha_pattern` keys of adapter_config.json.
//!
//! serde_json's `Map` sorts keys (this workspace does not enable `preserve_order`, which would change
//! JSON output everywhere), but PEFT's `get_pattern_key` takes the first matching key in the dict's
//! order, which is the file's order (`json.load`). A second, small pass over the text collects just
//! those keys, in order, as Python builds the dict: a repeated key keeps its first position (and the
//! last value, which the `Map` has too); a repeated top-level object counts the last time.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Keys of the two pattern objects in file order (empty when absent or not objects).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct PatternOrder {
    pub rank_pattern: Vec<String>,
    pub alpha_pattern: Vec<String>,
}

/// Reads the order of the pattern keys from the config text.
pub(crate) fn pattern_key_order(text: &str) -> serde_json::Result<PatternOrder> {
    serde_json::from_str::<TopLevel>(text).map(|t| t.0)
}

/// Puts `pairs` in the order of `order` (keys missing from `order` keep their place at the end).
pub(crate) fn reorder<V>(pairs: &mut [(String, V)], order: &[String]) {
    pairs.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
}

struct TopLevel(PatternOrder);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut out = PatternOrder::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "rank_pattern" => out.rank_pattern = map.next_value::<Keys>()?.0,
                "alpha_pattern" => out.alpha_pattern = map.next_value::<Keys>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(TopLevel(out))
    }
}

/// The keys of an object in order (first position of a repeated key); nothing for any other value.
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeysVisitor)
    }
}

struct KeysVisitor;

impl<'de> Visitor<'de> for KeysVisitor {
    type Value = Keys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            map.next_value::<IgnoredAny>()?;
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(Keys(keys))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Keys, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Keys(Vec::new()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_str<E>(self, _: &str) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_unit<E>(self) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
    fn visit_none<E>(self) -> Result<Keys, E> {
        Ok(Keys(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_file_order_like_python() {
        let text = r#"{"a": 1, "rank_pattern": {"z": 1, "b": 2, "z": 3, "a": {"x": []}},
                       "alpha_pattern": {"q": 1, "k": 2}, "n": [1, {"rank_pattern": {}}]}"#;
        let o = pattern_key_order(text).unwrap();
        assert_eq!(o.rank_pattern, ["z", "b", "a"]);
        assert_eq!(o.alpha_pattern, ["q", "k"]);
        let o = pattern_key_order(
            r#"{"rank_pattern": null, "alpha_pattern": {"b": 1},
                                      "alpha_pattern": {"c": 1, "a": 2}}"#,
        )
        .unwrap();
        assert!(o.rank_pattern.is_empty());
        assert_eq!(
            o.alpha_pattern,
            ["c", "a"],
            "the last repeated top-level key counts"
        );
        let mut pairs = vec![
            ("a".to_string(), 1),
            ("c".to_string(), 2),
            ("d".to_string(), 3),
        ];
        reorder(&mut pairs, &["c".to_string(), "a".to_string()]);
        assert_eq!(pairs, [("c".into(), 2), ("a".into(), 1), ("d".into(), 3)]);
    }
}
