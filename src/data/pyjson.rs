//! The `tojson` filter as Hugging Face chat templates get it from transformers:
//! `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`.
//! Python's layout, not serde_json's: `", "` and `": "` between items (`","` with an indent),
//! floats in `repr` form, non-ASCII kept, no HTML escaping (minijinja's own `tojson` escapes `<`,
//! which would change every tool schema the gpt-oss template prints).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Layout options of `json.dumps`.
#[derive(Debug, Clone, Default)]
pub struct PyJsonOptions {
    /// `indent=N`: newline and N spaces per level.
    pub indent: Option<usize>,
    /// `separators=(item, key)`.
    pub separators: Option<(String, String)>,
    /// `sort_keys=True`.
    pub sort_keys: bool,
}

/// The filter: `x|tojson`, `x|tojson(indent=2)`, `x|tojson(separators=(",", ":"), sort_keys=true)`.
pub fn tojson_filter(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let separators = match separators {
        None => None,
        Some(s) if s.len() == 2 => Some((s[0].clone(), s[1].clone())),
        Some(s) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: separators must be two strings, got {}", s.len()),
            ))
        }
    };
    let opts = PyJsonOptions {
        indent,
        separators,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write(&mut out, &value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

/// `json.dumps(value, ensure_ascii=False, ...)`.
pub fn dumps(value: &Value, opts: &PyJsonOptions) -> Result<String, Error> {
    let mut out = String::new();
    write(&mut out, value, opts, 0)?;
    Ok(out)
}

fn newline(out: &mut String, opts: &PyJsonOptions, level: usize) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * level));
    }
}

fn write(out: &mut String, v: &Value, opts: &PyJsonOptions, level: usize) -> Result<(), Error> {
    let (item_sep, key_sep) = match (&opts.separators, opts.indent) {
        (Some((i, k)), _) => (i.as_str(), k.as_str()),
        (None, Some(_)) => (",", ": "),
        (None, None) => (", ", ": "),
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_seq(out, &items, opts, level, item_sep)?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, opts, level + 1);
                match k.as_str() {
                    Some(s) => write_string(out, s),
                    None => write_string(out, &k.to_string()),
                }
                out.push_str(key_sep);
                write(out, &v.get_item(k)?, opts, level + 1)?;
            }
            newline(out, opts, level);
            out.push('}');
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {other:?} value is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn write_seq(
    out: &mut String,
    items: &[Value],
    opts: &PyJsonOptions,
    level: usize,
    item_sep: &str,
) -> Result<(), Error> {
    if items.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(item_sep);
        }
        newline(out, opts, level + 1);
        write(out, item, opts, level + 1)?;
    }
    newline(out, opts, level);
    out.push(']');
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if let Some(f) = float_of(v) {
        if f.is_nan() {
            out.push_str("NaN");
        } else if f.is_infinite() {
            out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            out.push_str(&adapters::json::python_float_repr(f));
        }
    } else {
        out.push_str(&v.to_string());
    }
}

/// The value as f64 when it is a float (integers print as integers).
fn float_of(v: &Value) -> Option<f64> {
    if v.is_integer() {
        return None;
    }
    f64::try_from(v.clone()).ok()
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_string(out: &mut String, s: &str) {
    adapters::json::write_json_string(out, s, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::value::from_json;

    fn dump(json: &str, opts: &PyJsonOptions) -> String {
        dumps(&from_json(json).unwrap(), opts).unwrap()
    }

    /// Expected strings from Python 3.11: `json.dumps(json.loads(s), ensure_ascii=False, ...)`.
    #[test]
    fn matches_python_json_dumps() {
        let d = PyJsonOptions::default();
        assert_eq!(
            dump(
                r#"{"b": 1, "a": [2.0, "é<>&'", null, true, 1e-5, 1.5]}"#,
                &d
            ),
            r#"{"b": 1, "a": [2.0, "é<>&'", null, true, 1e-05, 1.5]}"#
        );
        assert_eq!(
            dump(r#"{"x": "a\"b\\c\n\u0001"}"#, &d),
            r#"{"x": "a\"b\\c\n\u0001"}"#
        );
        assert_eq!(dump("[]", &d), "[]");
        assert_eq!(dump("{}", &d), "{}");
        let indent = PyJsonOptions {
            indent: Some(2),
            ..Default::default()
        };
        assert_eq!(
            dump(r#"{"a": [1, {"b": []}]}"#, &indent),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": []\n    }\n  ]\n}"
        );
        let compact = PyJsonOptions {
            separators: Some((",".into(), ":".into())),
            sort_keys: true,
            ..Default::default()
        };
        assert_eq!(dump(r#"{"b": 1, "a": 2}"#, &compact), r#"{"a":2,"b":1}"#);
    }
}
