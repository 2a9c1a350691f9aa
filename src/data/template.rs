//! The checkpoint's own chat template, rendered like transformers' `apply_chat_template`:
//! minijinja with `trim_blocks` + `lstrip_blocks`, loop controls, Python string/dict methods
//! (`pycompat`), and the globals HF templates use: `raise_exception`, `strftime_now` (fixed by
//! `--chat_template_date` for reproducible runs), the Python-style `tojson` filter, the tokenizer's
//! special tokens (`bos_token`, `eos_token`, `pad_token`) and `add_generation_prompt`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use minijinja::{Environment, Error, ErrorKind, Value};

use super::pyjson::tojson_filter;

/// Where the template came from (for messages).
const TEMPLATE_FILE: &str = "chat_template.jinja";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A compiled chat template with its fixed globals.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file the template was read from.
    pub origin: PathBuf,
    /// `eos_token` of `tokenizer_config.json` (appended to plain-text completions).
    pub eos_token: Option<String>,
}

/// Variables every render gets besides the messages.
#[derive(Debug, Clone, Default)]
pub struct TemplateVars {
    /// Pairs set before a row's own keys (flags: `--reasoning_effort`, `--chat_template_kwargs`).
    pub defaults: Vec<(String, Value)>,
}

impl ChatTemplate {
    /// The template of `dir`, or `None` when it has neither `chat_template.jinja` nor a
    /// `chat_template` in `tokenizer_config.json` (a template that fails to parse is an error).
    pub fn find(dir: &Path, date: Option<NaiveDate>) -> Result<Option<Self>> {
        let in_config =
            read_tokenizer_config(dir)?.is_some_and(|c| c.contains_key("chat_template"));
        if !dir.join(TEMPLATE_FILE).is_file() && !in_config {
            return Ok(None);
        }
        Self::load(dir, date).map(Some)
    }

    /// Loads `chat_template.jinja`, else `chat_template` of `tokenizer_config.json`, from `dir`.
    /// `date` fixes what `strftime_now` prints (midnight of that day); `None` uses the clock.
    pub fn load(dir: &Path, date: Option<NaiveDate>) -> Result<Self> {
        let config = read_tokenizer_config(dir)?;
        let file = dir.join(TEMPLATE_FILE);
        let (source, origin) = if file.is_file() {
            let s = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            (s, file)
        } else {
            let cfg_path = dir.join(TOKENIZER_CONFIG);
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                Some(serde_json::Value::String(s)) => (s.clone(), cfg_path),
                Some(serde_json::Value::Array(list)) => (pick_default(list, &cfg_path)?, cfg_path),
                _ => bail!(
                    "{}: no chat template: neither {TEMPLATE_FILE} nor a `chat_template` in \
                     {TOKENIZER_CONFIG} (a chat dataset needs the checkpoint's template)",
                    dir.display()
                ),
            }
        };
        let special = |key: &str| -> Option<String> {
            match config.as_ref()?.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", move |fmt: String| strftime(date, &fmt));
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(tok) = special(key) {
                env.add_global(key, tok);
            }
        }
        env.add_template_owned("chat", source).map_err(|e| {
            anyhow::anyhow!(
                "{}: the chat template does not parse: {e:#}",
                origin.display()
            )
        })?;
        Ok(Self {
            env,
            origin,
            eos_token: special("eos_token"),
        })
    }

    /// Renders `messages` (a list of message maps) with the default variables, then `row_vars`
    /// (a row's own keys), then `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &Value,
        vars: &TemplateVars,
        row_vars: &[(String, Value)],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let mut ctx: Vec<(String, Value)> = vars.defaults.clone();
        ctx.extend(row_vars.iter().cloned());
        ctx.push(("messages".into(), messages.clone()));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let tmpl = self.env.get_template("chat").map_err(TemplateError::from)?;
        tmpl.render(Value::from_iter(ctx))
            .map_err(TemplateError::from)
    }
}

/// A render failure: the template's own `raise_exception` message, or an engine error.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// `raise_exception(msg)` was called: the row is something the template refuses.
    #[error("the chat template refused it: {0}")]
    Raised(String),
    /// Any other template error (undefined value, bad type, ...).
    #[error("the chat template failed: {0}")]
    Engine(String),
}

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        let mut root: &dyn std::error::Error = &e;
        while let Some(src) = root.source() {
            root = src;
        }
        let text = e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        if let Some(msg) = text.strip_prefix(RAISED) {
            return Self::Raised(msg.to_string());
        }
        if let Some(msg) = root.to_string().split(RAISED).nth(1) {
            return Self::Raised(msg.to_string());
        }
        Self::Engine(format!("{e:#}"))
    }
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// `strftime_now(fmt)`: the fixed date at midnight, or the local time now.
fn strftime(date: Option<NaiveDate>, fmt: &str) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    let res = match date {
        Some(d) => write!(
            out,
            "{}",
            d.and_hms_opt(0, 0, 0).unwrap_or_default().format(fmt)
        ),
        None => write!(out, "{}", chrono::Local::now().format(fmt)),
    };
    res.map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {fmt:?}"),
        )
    })?;
    Ok(out)
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let path = dir.join(TOKENIZER_CONFIG);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => bail!("{}: not a JSON object", path.display()),
        Err(e) => bail!("{}: invalid JSON: {e}", path.display()),
    }
}

/// `chat_template` as a list of `{name, template}`: the one named `default`.
fn pick_default(list: &[serde_json::Value], path: &Path) -> Result<String> {
    list.iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
        .and_then(|t| t.get("template")?.as_str())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{}: `chat_template` list has no `default` entry",
                path.display()
            )
        })
}

/// Parses `--chat_template_date YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("--chat_template_date {s:?}: expected YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(dir: &Path, src: &str) -> ChatTemplate {
        std::fs::write(dir.join(TEMPLATE_FILE), src).unwrap();
        ChatTemplate::load(dir, parse_date("2026-01-01").ok()).unwrap()
    }

    #[test]
    fn globals_filters_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = template(
            dir.path(),
            "{%- for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no ' + m.role) }}{% endif %}\
             {{ m.role }}:{{ m.content|tojson }}{% if loop.index == 1 %}{% continue %}{% endif %};{% endfor %}\
             {{ strftime_now('%d %b %Y') }}{{ extra }}{{ m|default('') }}{{ 'A b'.lower() }}",
        );
        let msgs = crate::data::value::from_json(
            r#"[{"role":"user","content":"<x>"},{"role":"assistant","content":"é"}]"#,
        )
        .unwrap();
        let vars = TemplateVars::default();
        let got = t
            .render(&msgs, &vars, &[("extra".into(), Value::from("!"))], false)
            .unwrap();
        assert_eq!(got, "user:\"<x>\"assistant:\"é\";01 Jan 2026!a b");
        let bad = crate::data::value::from_json(r#"[{"role":"bad","content":""}]"#).unwrap();
        match t.render(&bad, &vars, &[], false) {
            Err(TemplateError::Raised(m)) => assert_eq!(m, "no bad"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn template_from_tokenizer_config_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::load(dir.path(), None)
            .err()
            .unwrap()
            .to_string()
            .contains("no chat template"));
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"chat_template": "{{ bos_token }}{{ messages|length }}", "bos_token": {"content": "<s>"}}"#,
        )
        .unwrap();
        let t = ChatTemplate::load(dir.path(), None).unwrap();
        let got = t
            .render(
                &Value::from(vec![1, 2]),
                &TemplateVars::default(),
                &[],
                false,
            )
            .unwrap();
        assert_eq!(got, "<s>2");
    }
}
