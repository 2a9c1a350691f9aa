//! One row to training tokens: render with the chat template, tokenize with the checkpoint's
//! `tokenizer.json` (special tokens as the template writes them, no extra BOS: what
//! `apply_chat_template(..., tokenize=True)` gives), and mark which tokens are trained.
//!
//! Masks: conversations train the assistant turns (every token whose characters lie after
//! `<|start|>assistant` up to and including the closing `<|end|>`, `<|return|>` or `<|call|>`), or every
//! token with `assistant_only_loss = false`; prompt-completion rows train the completion (TRL's rule:
//! the tokens after the prompt's own tokenization); plain text trains everything. Text and text
//! completions end with the EOS token, like TRL adds it.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use minijinja::Value;
use tokenizers::Tokenizer;

use super::fast_bpe::FastBpe;
use super::row::Row;
use super::template::{ChatTemplate, TemplateVars};

/// A tokenized example: ids and, per token, whether it is trained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token: counted in the loss.
    pub trained: Vec<bool>,
}

/// An encoded example with the text it came from and the trained byte ranges of that text.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The rendered text.
    pub text: String,
    /// Byte ranges of `text` covered by trained tokens.
    pub trained_spans: Vec<Range<usize>>,
    /// The tokens.
    pub encoded: Encoded,
}

/// Token ids and the byte range of each in the text.
pub type Tokens = (Vec<u32>, Vec<(usize, usize)>);

/// Renders, tokenizes and masks rows.
pub struct Encoder {
    /// The chat template (needed for conversation rows).
    pub template: Option<ChatTemplate>,
    /// The checkpoint's tokenizer, or why there is none (pre-tokenized data needs none).
    tokenizer: Result<Tokenizer, String>,
    fast: Option<FastBpe>,
    /// Template variables from flags.
    pub vars: TemplateVars,
    /// Train only assistant turns of conversations.
    pub assistant_only_loss: bool,
    /// Ids must be below this (the model's `vocab_size`).
    pub vocab_size: usize,
}

const ASSISTANT_HEAD: &str = "<|start|>assistant";
const CLOSERS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

impl Encoder {
    /// Loads `tokenizer.json` from `dir`; `template` is the checkpoint's chat template if it has one.
    pub fn new(
        dir: &Path,
        template: Option<ChatTemplate>,
        vars: TemplateVars,
        assistant_only_loss: bool,
        vocab_size: usize,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        anyhow::ensure!(
            path.is_file(),
            "{}: no tokenizer.json (the checkpoint's tokenizer is needed to tokenize the data)",
            dir.display()
        );
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let tokenizer = Tokenizer::from_bytes(&text)
            .map_err(|e| anyhow::anyhow!("{}: cannot load the tokenizer: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let fast = match FastBpe::detect(&json) {
            Ok(f) => {
                tracing::debug!("{}: o200k, using the fast BPE path", path.display());
                Some(f)
            }
            Err(why) => {
                tracing::debug!("{}: general tokenizer path ({why})", path.display());
                None
            }
        };
        Ok(Self {
            template,
            tokenizer: Ok(tokenizer),
            fast,
            vars,
            assistant_only_loss,
            vocab_size,
        })
    }

    /// Whether the fast o200k path is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Tokenizes `text` (no special tokens added): ids and byte offsets; the fast o200k path when
    /// it applies, else the `tokenizers` pipeline.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, String> {
        let (ids, offsets) = match &self.fast {
            Some(f) => f.encode(text),
            None => self.tokenize_reference(text)?,
        };
        self.check_vocab(&ids)?;
        Ok((ids, offsets))
    }

    /// Tokenizes with the `tokenizers` pipeline (the reference of the fast path).
    pub fn tokenize_reference(&self, text: &str) -> Result<Tokens, String> {
        let enc = self
            .tokenizer
            .as_ref()
            .map_err(Clone::clone)?
            .encode(text, false)
            .map_err(|e| format!("tokenizer failed: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    fn check_vocab(&self, ids: &[u32]) -> Result<(), String> {
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            return Err(format!(
                "token {i} has id {id}, outside the model's vocabulary (vocab_size {})",
                self.vocab_size
            ));
        }
        Ok(())
    }

    fn template(&self) -> Result<&ChatTemplate, String> {
        self.template.as_ref().ok_or_else(|| {
            "a conversation row needs the checkpoint's chat template: the checkpoint has neither \
                 chat_template.jinja nor a `chat_template` in tokenizer_config.json"
                .into()
        })
    }

    fn render(
        &self,
        messages: &Value,
        vars: &[(String, Value)],
        gen: bool,
    ) -> Result<String, String> {
        self.template()?
            .render(messages, &self.vars, vars, gen)
            .map_err(|e| e.to_string())
    }

    /// Encodes a row, keeping the rendered text and its trained spans (for `--show`).
    pub fn encode_shown(&self, row: &Row) -> Result<Shown, String> {
        match row {
            Row::Messages { messages, vars } => {
                let text = self.render(messages, vars, false)?;
                let (ids, offsets) = self.tokenize(&text)?;
                let trained = if self.assistant_only_loss {
                    let spans = assistant_spans(&text);
                    offsets
                        .iter()
                        .map(|&(s, e)| spans.iter().any(|r| r.start <= s && e <= r.end))
                        .collect()
                } else {
                    vec![true; ids.len()]
                };
                Ok(shown(text, offsets, Encoded { ids, trained }))
            }
            Row::ChatCompletion {
                prompt,
                completion,
                vars,
            } => {
                let prompt_text = self.render(prompt, vars, true)?;
                let mut all = prompt
                    .try_iter()
                    .map_err(|e| e.to_string())?
                    .collect::<Vec<_>>();
                all.extend(completion.try_iter().map_err(|e| e.to_string())?);
                let text = self.render(&Value::from(all), vars, false)?;
                self.completion(&prompt_text, text)
            }
            Row::TextCompletion { prompt, completion } => {
                let text = format!("{prompt}{completion}{}", self.eos_suffix(completion));
                self.completion(prompt, text)
            }
            Row::Tokenized { ids, trained } => {
                self.check_vocab(ids)?;
                let encoded = Encoded {
                    ids: ids.clone(),
                    trained: trained.clone(),
                };
                // no text: `--show` prints the ids of pre-tokenized rows
                Ok(Shown {
                    text: String::new(),
                    trained_spans: Vec::new(),
                    encoded,
                })
            }
            Row::Text(t) => {
                let text = format!("{t}{}", self.eos_suffix(t));
                let (ids, offsets) = self.tokenize(&text)?;
                let trained = vec![true; ids.len()];
                Ok(shown(text, offsets, Encoded { ids, trained }))
            }
        }
    }

    /// Encodes a row.
    pub fn encode(&self, row: &Row) -> Result<Encoded, String> {
        self.encode_shown(row).map(|s| s.encoded)
    }

    /// `text` = prompt + completion: the tokens past the prompt's own tokens are trained.
    fn completion(&self, prompt: &str, text: String) -> Result<Shown, String> {
        let (prompt_ids, _) = self.tokenize(prompt)?;
        let (ids, offsets) = self.tokenize(&text)?;
        if !ids.starts_with(&prompt_ids) {
            tracing::debug!("the prompt's tokens are not a prefix of prompt + completion");
        }
        let trained = (0..ids.len()).map(|i| i >= prompt_ids.len()).collect();
        Ok(shown(text, offsets, Encoded { ids, trained }))
    }

    fn eos_suffix(&self, text: &str) -> String {
        let eos = self.template.as_ref().and_then(|t| t.eos_token.clone());
        match eos {
            Some(eos) if !text.ends_with(&eos) => eos,
            _ => String::new(),
        }
    }

    /// Tokens of the shortest conversation (an empty user turn and the assistant header).
    pub fn header_len(&self) -> Result<usize> {
        let msgs = super::value::from_json(r#"[{"role": "user", "content": ""}]"#)?;
        let text = self
            .render(&msgs, &[], true)
            .map_err(anyhow::Error::msg)
            .context("rendering an empty conversation")?;
        Ok(self.tokenize(&text).map_err(anyhow::Error::msg)?.0.len())
    }
}

fn shown(text: String, offsets: Vec<(usize, usize)>, encoded: Encoded) -> Shown {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (&(s, e), &t) in offsets.iter().zip(&encoded.trained) {
        if !t {
            continue;
        }
        match spans.last_mut() {
            Some(last) if last.end >= s => last.end = last.end.max(e),
            _ => spans.push(s..e),
        }
    }
    Shown {
        text,
        trained_spans: spans,
        encoded,
    }
}

/// Byte ranges trained by default: after each `<|start|>assistant` through its closing token.
pub fn assistant_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while let Some(j) = text[i..].find(ASSISTANT_HEAD) {
        let s = i + j + ASSISTANT_HEAD.len();
        let end = CLOSERS
            .iter()
            .filter_map(|c| text[s..].find(c).map(|k| s + k + c.len()))
            .min();
        match end {
            Some(e) => {
                spans.push(s..e);
                i = e;
            }
            None => {
                spans.push(s..text.len());
                break;
            }
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_the_rule() {
        let t = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>yo<|return|>";
        let s = assistant_spans(t);
        assert_eq!(s.len(), 1);
        assert_eq!(&t[s[0].clone()], "<|channel|>final<|message|>yo<|return|>");
        let t = "<|start|>assistant to=functions.f<|channel|>commentary<|message|>{}<|call|>x<|start|>assistant";
        let s = assistant_spans(t);
        assert_eq!(
            &t[s[0].clone()],
            " to=functions.f<|channel|>commentary<|message|>{}<|call|>"
        );
        assert_eq!(s[1], t.len()..t.len());
    }
}
