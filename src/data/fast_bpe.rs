//! A fast path for o200k tokenizers (gpt-oss's o200k_harmony): when the checkpoint's
//! `tokenizer.json` is exactly o200k (same byte-level vocabulary, same pre-tokenization regex, no
//! normalizer, special tokens matched verbatim), encode with `bpe-openai`'s o200k (backtracking BPE,
//! tiktoken-equal) instead of the general `tokenizers` pipeline, which allocates several strings
//! per token. Special tokens are split out first, leftmost-longest, as `tokenizers` does. The
//! general pipeline stays the reference: `tests/data_fast_bpe.rs` checks both give the same ids and
//! masks, and any other tokenizer uses the reference.

use aho_corasick::{AhoCorasick, MatchKind};
use bpe_openai::Tokenizer as Bpe;
use serde_json::Value;

/// The o200k pre-tokenization regex as `tokenizer.json` stores it.
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// o200k with the checkpoint's special tokens.
pub struct FastBpe {
    bpe: &'static Bpe,
    specials: AhoCorasick,
    special_ids: Vec<u32>,
}

/// GPT-2's byte-to-character table (byte-level BPE vocabularies spell bytes with these chars).
fn char_to_byte() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = std::collections::HashMap::new();
    let mut extra = 0u32;
    for b in 0..=255u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).unwrap_or('\0'), b as u8);
    }
    map
}

impl FastBpe {
    /// The fast path for `tokenizer_json` (the parsed file), or why it does not apply.
    pub fn detect(tokenizer_json: &Value) -> Result<Self, String> {
        let t = tokenizer_json;
        if !t["normalizer"].is_null() {
            return Err("has a normalizer".into());
        }
        let pre = &t["pre_tokenizer"];
        let parts = pre["pretokenizers"]
            .as_array()
            .ok_or("pre-tokenizer is not a sequence")?;
        let [split, byte_level] = parts.as_slice() else {
            return Err("pre-tokenizer is not Split + ByteLevel".into());
        };
        let split_ok = split["type"] == "Split"
            && split["pattern"]["Regex"] == O200K_PATTERN
            && split["behavior"] == "Isolated"
            && split["invert"] == false;
        let bl_ok = byte_level["type"] == "ByteLevel"
            && byte_level["add_prefix_space"] == false
            && byte_level["use_regex"] == false;
        if !split_ok || !bl_ok {
            return Err("pre-tokenizer is not o200k's".into());
        }
        let model = &t["model"];
        if model["type"] != "BPE" || model["byte_fallback"] == true || !model["dropout"].is_null() {
            return Err("model is not a plain byte-level BPE".into());
        }
        let vocab = model["vocab"].as_object().ok_or("model has no vocab")?;
        let bpe = bpe_openai::o200k_base();
        let n = bpe.bpe.num_tokens();
        if vocab.len() != n {
            return Err(format!("vocabulary has {} tokens, o200k {n}", vocab.len()));
        }
        let table = char_to_byte();
        for (token, id) in vocab {
            let id = id.as_u64().ok_or("non-integer id")? as usize;
            let bytes: Option<Vec<u8>> = token.chars().map(|c| table.get(&c).copied()).collect();
            if id >= n || bytes.as_deref() != Some(bpe.bpe.token_bytes(id as u32)) {
                return Err(format!("token {id} differs from o200k's"));
            }
        }
        let added = t["added_tokens"].as_array().ok_or("no added_tokens list")?;
        let mut patterns = Vec::new();
        let mut special_ids = Vec::new();
        for a in added {
            let plain = a["normalized"] == false
                && a["lstrip"] == false
                && a["rstrip"] == false
                && a["single_word"] == false;
            if !plain {
                return Err(format!("added token {} has matching options", a["content"]));
            }
            let id = a["id"].as_u64().ok_or("added token without id")? as usize;
            if id < n {
                return Err(format!("added token {id} overlaps the vocabulary"));
            }
            patterns.push(
                a["content"]
                    .as_str()
                    .ok_or("added token without content")?
                    .to_string(),
            );
            special_ids.push(id as u32);
        }
        let specials = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            bpe,
            specials,
            special_ids,
        })
    }

    /// Ids and byte offsets of `text`.
    pub fn encode(&self, text: &str) -> (Vec<u32>, Vec<(usize, usize)>) {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut offsets = Vec::with_capacity(text.len() / 3);
        let mut at = 0;
        let plain =
            |ids: &mut Vec<u32>, offsets: &mut Vec<(usize, usize)>, from: usize, to: usize| {
                let mut pos = from;
                for piece in self.bpe.split(&text[from..to]) {
                    for id in self.bpe.bpe.encode_via_backtracking(piece.as_bytes()) {
                        let len = self.bpe.bpe.token_len(id);
                        ids.push(id);
                        offsets.push((pos, pos + len));
                        pos += len;
                    }
                }
            };
        for m in self.specials.find_iter(text) {
            plain(&mut ids, &mut offsets, at, m.start());
            ids.push(self.special_ids[m.pattern().as_usize()]);
            offsets.push((m.start(), m.end()));
            at = m.end();
        }
        plain(&mut ids, &mut offsets, at, text.len());
        (ids, offsets)
    }
}
