//! Rendering, token ids and loss masks against goldens made by the reference stack:
//! - the tiny fixture's `golden_chat.json` (make_fixture.py: jinja2 + tokenizers) for every row of
//!   `data/train.jsonl`;
//! - `gpt-oss-chat/golden_real.json` (scripts/gen_chat_golden.py: transformers'
//!   `apply_chat_template(..., tokenize=True)` with the real gpt-oss template and o200k_harmony).

mod data_support;

use data_support::{fixtures, ints, read_json, real_tokenizer_dir, tiny_base};
use lora_qat::data::encode::assistant_spans;
use lora_qat::data::row::classify;
use lora_qat::data::value::from_json;
use lora_qat::data::{load_encoder, Encoder, RenderOptions};

fn encoder(dir: &std::path::Path, date: &str) -> Encoder {
    let opts = RenderOptions {
        date: Some(date.to_string()),
        assistant_only_loss: true,
        ..Default::default()
    };
    load_encoder(dir, &opts).expect("encoder loads")
}

fn mask(trained: &[bool]) -> Vec<i64> {
    trained.iter().map(|&t| t as i64).collect()
}

#[test]
fn tiny_fixture_rows_equal_golden_chat() {
    let golden = read_json(&fixtures().join("tiny-gpt-oss/golden_chat.json"));
    let enc = encoder(&tiny_base(), golden["date"].as_str().unwrap());
    let data = std::fs::read_to_string(fixtures().join("tiny-gpt-oss/data/train.jsonl")).unwrap();
    let rows = golden["rows"].as_array().unwrap();
    let lines: Vec<&str> = data.lines().collect();
    assert_eq!(lines.len(), rows.len());
    for (i, (line, want)) in lines.iter().zip(rows).enumerate() {
        let row = classify(&from_json(line).unwrap()).unwrap();
        let got = enc.encode_shown(&row).unwrap();
        assert_eq!(got.text, want["text"].as_str().unwrap(), "row {i}: text");
        let ids: Vec<i64> = got.encoded.ids.iter().map(|&x| x as i64).collect();
        assert_eq!(ids, ints(&want["input_ids"]), "row {i}: ids");
        assert_eq!(
            mask(&got.encoded.trained),
            ints(&want["assistant_mask"]),
            "row {i}: mask"
        );
    }
}

/// The golden file read with its key order (serde_json's `Value` sorts keys; tool schemas and
/// tool-call arguments must keep their order).
fn ordered_golden() -> minijinja::Value {
    let text = std::fs::read_to_string(fixtures().join("gpt-oss-chat/golden_real.json")).unwrap();
    from_json(&text).unwrap()
}

/// A row made of `fields` of an ordered golden entry plus its template kwargs as row keys.
fn golden_row(entry: &minijinja::Value, fields: &[&str]) -> minijinja::Value {
    let kwargs = entry.get_attr("kwargs").unwrap();
    let mut pairs: Vec<(String, minijinja::Value)> = kwargs
        .try_iter()
        .unwrap()
        .map(|k| (k.to_string(), kwargs.get_item(&k).unwrap()))
        .collect();
    for f in fields {
        pairs.push((f.to_string(), entry.get_attr(f).unwrap()));
    }
    minijinja::Value::from_iter(pairs)
}

#[test]
fn real_template_and_tokenizer_equal_transformers() {
    let golden = read_json(&fixtures().join("gpt-oss-chat/golden_real.json"));
    let dir = real_tokenizer_dir();
    let enc = encoder(dir.path(), golden["date"].as_str().unwrap());
    let rows = golden["rows"].as_array().unwrap();
    let ordered = ordered_golden().get_attr("rows").unwrap();
    assert!(rows.len() >= 10);
    for (i, want) in rows.iter().enumerate() {
        let row = golden_row(&ordered.get_item_by_index(i).unwrap(), &["messages"]);
        let name = want["name"].as_str().unwrap();
        let (text, ids, trained) = if want["add_generation_prompt"].as_bool().unwrap() {
            // the data path never asks for a generation prompt; check the template + tokenizer
            let vars: Vec<(String, minijinja::Value)> = want["kwargs"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), row.get_attr(k).unwrap()))
                .collect();
            let text = enc
                .template
                .as_ref()
                .unwrap()
                .render(&row.get_attr("messages").unwrap(), &enc.vars, &vars, true)
                .unwrap();
            let (ids, offsets) = enc.tokenize(&text).unwrap();
            let spans = assistant_spans(&text);
            let trained: Vec<bool> = offsets
                .iter()
                .map(|&(s, e)| spans.iter().any(|r| r.start <= s && e <= r.end))
                .collect();
            (text, ids, trained)
        } else {
            let got = enc.encode_shown(&classify(&row).unwrap()).unwrap();
            (got.text, got.encoded.ids, got.encoded.trained)
        };
        assert_eq!(text, want["text"].as_str().unwrap(), "{name}: text");
        let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        assert_eq!(ids, ints(&want["input_ids"]), "{name}: ids");
        assert_eq!(
            mask(&trained),
            ints(&want["assistant_mask"]),
            "{name}: mask"
        );
    }
}

#[test]
fn prompt_completion_rows_train_the_completion_like_trl() {
    let golden = read_json(&fixtures().join("gpt-oss-chat/golden_real.json"));
    let dir = real_tokenizer_dir();
    let enc = encoder(dir.path(), golden["date"].as_str().unwrap());
    let ordered = ordered_golden().get_attr("prompt_completion").unwrap();
    for (i, want) in golden["prompt_completion"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let name = want["name"].as_str().unwrap();
        let entry = ordered.get_item_by_index(i).unwrap();
        let row = classify(&golden_row(&entry, &["prompt", "completion"])).unwrap();
        let got = enc.encode(&row).unwrap();
        let ids: Vec<i64> = got.ids.iter().map(|&x| x as i64).collect();
        assert_eq!(ids, ints(&want["input_ids"]), "{name}: ids");
        assert_eq!(
            mask(&got.trained),
            ints(&want["completion_mask"]),
            "{name}: mask"
        );
    }
}
