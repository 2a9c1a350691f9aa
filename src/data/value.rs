//! Dataset rows as template values: JSON text and Parquet records become `minijinja::Value`s with
//! their keys in file order (Python dicts keep insertion order, and templates iterate them:
//! `tojson`, `.items()` of tool parameters), integers and floats kept apart like `json.loads`.

use std::fmt;

use minijinja::Value;
use parquet::record::{Field, Row};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses one JSON document into an ordered template value.
pub fn from_json(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = de.deserialize_any(OrderedVisitor)?;
    de.end()?;
    Ok(v)
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::from(()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed)? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs: Vec<(String, Value)> = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Seed)?;
            // a repeated key keeps its first position and its last value, like Python's json
            match pairs.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => pairs.push((k, v)),
            }
        }
        Ok(Value::from_iter(pairs))
    }
}

struct Seed;

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

/// A Parquet record (one row) as an ordered map of its columns.
pub fn from_parquet_row(row: &Row) -> Value {
    Value::from_iter(
        row.get_column_iter()
            .map(|(name, field)| (name.clone(), from_parquet_field(field))),
    )
}

fn from_parquet_field(f: &Field) -> Value {
    match f {
        Field::Null => Value::from(()),
        Field::Bool(b) => Value::from(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float16(v) => Value::from(f32::from(*v)),
        Field::Float(v) => Value::from(*v),
        Field::Double(v) => Value::from(*v),
        Field::Str(s) => Value::from(s.as_str()),
        Field::Group(row) => from_parquet_row(row),
        Field::ListInternal(list) => Value::from(
            list.elements()
                .iter()
                .map(from_parquet_field)
                .collect::<Vec<_>>(),
        ),
        Field::MapInternal(map) => Value::from_iter(
            map.entries()
                .iter()
                .map(|(k, v)| (from_parquet_field(k), from_parquet_field(v))),
        ),
        // bytes, decimals, dates and timestamps: their printed form
        other => Value::from(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_key_order_and_number_kinds() {
        let v =
            from_json(r#"{"b": 1, "a": [2.0, "x", null, true], "c": {"z": 1, "y": 2}}"#).unwrap();
        let keys: Vec<String> = v.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        let c = v.get_attr("c").unwrap();
        let keys: Vec<String> = c.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["z", "y"]);
        let a = v.get_attr("a").unwrap();
        assert_eq!(
            a.get_item_by_index(0).unwrap().kind(),
            minijinja::value::ValueKind::Number
        );
        assert!(!a.get_item_by_index(0).unwrap().is_integer());
        assert!(v.get_attr("b").unwrap().is_integer());
    }

    #[test]
    fn json_errors_and_trailing_text() {
        assert!(from_json("{\"a\": }").is_err());
        assert!(from_json("{} {}").is_err());
        assert!(from_json("[1, 2]").is_ok());
    }
}
