//! What one dataset row asks to train on: a conversation (`messages`), TRL's prompt-completion
//! (`prompt` + `completion`, each a string or a message list) or plain `text`. The row's other keys
//! become template variables (`reasoning_language`, `developer`, `tools`, `reasoning_effort`, ...).

use minijinja::value::ValueKind;
use minijinja::Value;

/// The roles a gpt-oss conversation may hold.
pub const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// One row, classified.
#[derive(Debug, Clone)]
pub enum Row {
    /// A conversation: the template renders it, assistant turns are trained by default.
    Messages {
        /// The message list as the template sees it.
        messages: Value,
        /// The row's other keys.
        vars: Vec<(String, Value)>,
    },
    /// A conversational prompt and completion (message lists): only the completion is trained.
    ChatCompletion {
        prompt: Value,
        completion: Value,
        vars: Vec<(String, Value)>,
    },
    /// A plain-text prompt and completion: only the completion (+ EOS) is trained.
    TextCompletion { prompt: String, completion: String },
    /// Plain text: every token (+ EOS) is trained.
    Text(String),
    /// Already tokenized (`input_ids`, optional `labels`, as `prepare` writes them): trained where
    /// the label is not -100 (every token without labels).
    Tokenized { ids: Vec<u32>, trained: Vec<bool> },
}

/// Classifies a row; the error says what is missing or malformed (the caller adds file and line).
pub fn classify(row: &Value) -> Result<Row, String> {
    if row.kind() != ValueKind::Map {
        return Err(format!("a row must be a JSON object, got {}", row.kind()));
    }
    let get = |k: &str| {
        row.get_attr(k)
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_none())
    };
    let vars = || -> Vec<(String, Value)> {
        row.try_iter()
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let key = k.as_str()?.to_string();
                let skip = matches!(key.as_str(), "messages" | "prompt" | "completion" | "text");
                (!skip).then(|| (key, row.get_item(&k).unwrap_or_default()))
            })
            .collect()
    };
    if let Some(ids) = get("input_ids") {
        return tokenized(&ids, get("labels").as_ref(), get("position_ids").as_ref());
    }
    if let Some(messages) = get("messages") {
        check_messages(&messages, "messages")?;
        return Ok(Row::Messages {
            messages: without_nulls(&messages),
            vars: vars(),
        });
    }
    match (get("prompt"), get("completion")) {
        (Some(p), Some(c)) => {
            return match (p.as_str(), c.as_str()) {
                (Some(p), Some(c)) => Ok(Row::TextCompletion {
                    prompt: p.to_string(),
                    completion: c.to_string(),
                }),
                (None, None) => {
                    check_messages(&p, "prompt")?;
                    check_messages(&c, "completion")?;
                    Ok(Row::ChatCompletion {
                        prompt: without_nulls(&p),
                        completion: without_nulls(&c),
                        vars: vars(),
                    })
                }
                _ => Err(
                    "`prompt` and `completion` must both be strings or both message lists".into(),
                ),
            }
        }
        (Some(_), None) => return Err("`prompt` without `completion`".into()),
        (None, Some(_)) => return Err("`completion` without `prompt`".into()),
        (None, None) => {}
    }
    if let Some(text) = get("text") {
        return match text.as_str() {
            Some(t) => Ok(Row::Text(t.to_string())),
            None => Err(format!("`text` must be a string, got {}", text.kind())),
        };
    }
    let keys: Vec<String> = row
        .try_iter()
        .into_iter()
        .flatten()
        .map(|k| k.to_string())
        .collect();
    Err(format!(
        "no `messages`, `prompt`/`completion` or `text` (keys: {})",
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    ))
}

/// A list of integers.
fn ints(v: &Value, field: &str) -> Result<Vec<i64>, String> {
    if v.kind() != ValueKind::Seq {
        return Err(format!(
            "`{field}` must be a list of integers, got {}",
            v.kind()
        ));
    }
    v.try_iter()
        .map_err(|e| e.to_string())?
        .enumerate()
        .map(|(i, x)| {
            x.as_i64()
                .filter(|_| x.is_integer())
                .ok_or_else(|| format!("`{field}[{i}]` is not an integer: {x}"))
        })
        .collect()
}

/// A pre-tokenized row: one example (`position_ids`, if given, must be 0, 1, 2, ...).
fn tokenized(
    ids: &Value,
    labels: Option<&Value>,
    positions: Option<&Value>,
) -> Result<Row, String> {
    let ids = ints(ids, "input_ids")?;
    if ids.is_empty() {
        return Err("`input_ids` is empty".into());
    }
    let ids: Vec<u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            u32::try_from(x).map_err(|_| format!("`input_ids[{i}]` = {x} is not a token id"))
        })
        .collect::<Result<_, _>>()?;
    if let Some(p) = positions {
        let p = ints(p, "position_ids")?;
        if p.len() != ids.len() || p.iter().enumerate().any(|(i, &x)| x != i as i64) {
            return Err(
                "`position_ids` restart inside the row: a packed row cannot be read back; \
                        give the unpacked examples and --packing"
                    .into(),
            );
        }
    }
    let trained = match labels {
        None => vec![true; ids.len()],
        Some(l) => {
            let l = ints(l, "labels")?;
            if l.len() != ids.len() {
                return Err(format!(
                    "`labels` has {} values, `input_ids` {}",
                    l.len(),
                    ids.len()
                ));
            }
            l.iter()
                .zip(&ids)
                .enumerate()
                .map(|(i, (&lab, &id))| match lab {
                    crate::model::IGNORE_INDEX => Ok(false),
                    x if x == id as i64 => Ok(true),
                    x => Err(format!(
                        "`labels[{i}]` = {x}: a label is its token id or -100"
                    )),
                })
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Row::Tokenized { ids, trained })
}

/// The messages with their null-valued keys removed, as transformers passes them to the template
/// (datasets store absent fields as null: `"thinking": null` must not count as a thinking).
fn without_nulls(list: &Value) -> Value {
    let msgs = list.try_iter().into_iter().flatten().map(|m| {
        Value::from_iter(m.try_iter().into_iter().flatten().filter_map(|k| {
            let v = m.get_item(&k).ok()?;
            (!v.is_none() && !v.is_undefined()).then_some((k, v))
        }))
    });
    Value::from(msgs.collect::<Vec<_>>())
}

/// A message list: non-empty, each a map with a known `role`, `content`/`thinking` strings when
/// present.
fn check_messages(list: &Value, field: &str) -> Result<(), String> {
    if list.kind() != ValueKind::Seq {
        return Err(format!(
            "`{field}` must be a list of messages, got {}",
            list.kind()
        ));
    }
    let n = list.len().unwrap_or(0);
    if n == 0 {
        return Err(format!("`{field}` is empty"));
    }
    for i in 0..n {
        let m = list.get_item_by_index(i).unwrap_or_default();
        if m.kind() != ValueKind::Map {
            return Err(format!(
                "`{field}[{i}]` must be an object, got {}",
                m.kind()
            ));
        }
        let role = m.get_attr("role").unwrap_or_default();
        match role.as_str() {
            Some(r) if ROLES.contains(&r) => {}
            Some(r) => {
                return Err(format!(
                    "`{field}[{i}]`: role {r:?} is not one of {}",
                    ROLES.join(", ")
                ))
            }
            None => return Err(format!("`{field}[{i}]` has no `role` string")),
        }
        for key in ["content", "thinking"] {
            let v = m.get_attr(key).unwrap_or_default();
            let ok = v.is_undefined()
                || v.is_none()
                || v.kind() == ValueKind::String
                || key == "content" && v.kind() == ValueKind::Seq;
            if !ok {
                return Err(format!(
                    "`{field}[{i}].{key}` must be a string, got {}",
                    v.kind()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::value::from_json;

    fn row(s: &str) -> Result<Row, String> {
        classify(&from_json(s).unwrap())
    }

    #[test]
    fn kinds() {
        match row(r#"{"reasoning_language": "French", "messages": [{"role": "user", "content": "hi", "thinking": null}]}"#).unwrap() {
            Row::Messages { vars, messages } => {
                assert_eq!(messages.get_item_by_index(0).unwrap().len(), Some(2));
                assert_eq!(vars.len(), 1);
                assert_eq!(vars[0].0, "reasoning_language");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            row(r#"{"prompt": "a", "completion": "b"}"#),
            Ok(Row::TextCompletion { .. })
        ));
        assert!(matches!(
            row(
                r#"{"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}"#
            ),
            Ok(Row::ChatCompletion { .. })
        ));
        assert!(matches!(row(r#"{"text": "abc"}"#), Ok(Row::Text(_))));
        match row(r#"{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]}"#)
            .unwrap()
        {
            Row::Tokenized { ids, trained } => {
                assert_eq!(ids, vec![5, 6, 7]);
                assert_eq!(trained, vec![false, true, true]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rows_say_why() {
        for (json, want) in [
            (r#"{"foo": 1}"#, "no `messages`"),
            (r#"[1]"#, "must be a JSON object"),
            (r#"{"messages": []}"#, "is empty"),
            (r#"{"messages": "hi"}"#, "must be a list"),
            (
                r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
                "role \"robot\"",
            ),
            (r#"{"messages": [{"content": "x"}]}"#, "no `role`"),
            (
                r#"{"messages": [{"role": "user", "content": 3}]}"#,
                "content` must be a string",
            ),
            (r#"{"prompt": "a"}"#, "without `completion`"),
            (
                r#"{"prompt": "a", "completion": [{"role": "assistant"}]}"#,
                "must both be strings",
            ),
            (r#"{"text": 5}"#, "`text` must be a string"),
            (r#"{"input_ids": [1, -2]}"#, "`input_ids[1]` = -2"),
            (
                r#"{"input_ids": [1, 2], "labels": [1, 5]}"#,
                "`labels[1]` = 5",
            ),
            (
                r#"{"input_ids": [1, 2], "labels": [1]}"#,
                "`labels` has 1 values",
            ),
            (
                r#"{"input_ids": [1, 2], "position_ids": [0, 0]}"#,
                "restart inside the row",
            ),
            (r#"{"input_ids": [1.5]}"#, "not an integer"),
        ] {
            let err = row(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
