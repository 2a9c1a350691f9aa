//! The fast o200k path (`data::fast_bpe`, bpe-openai) against its reference (the `tokenizers`
//! pipeline on the checkpoint's own tokenizer.json): identical ids, and identical assistant masks,
//! on the real o200k_harmony tokenizer, for the golden conversations and for seeded random text
//! built to stress pre-tokenization (scripts, digits, whitespace runs, contractions, emoji,
//! combining marks, special tokens and fragments of them).

mod data_support;

use data_support::{fixtures, read_json, real_tokenizer_dir, tiny_base};
use lora_qat::data::encode::assistant_spans;
use lora_qat::data::{load_encoder, Encoder, RenderOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn encoder(dir: &std::path::Path) -> Encoder {
    let opts = RenderOptions {
        assistant_only_loss: true,
        ..Default::default()
    };
    load_encoder(dir, &opts).expect("encoder loads")
}

fn mask(text: &str, offsets: &[(usize, usize)]) -> Vec<bool> {
    let spans = assistant_spans(text);
    offsets
        .iter()
        .map(|&(s, e)| spans.iter().any(|r| r.start <= s && e <= r.end))
        .collect()
}

fn check(enc: &Encoder, text: &str) {
    let (fast, fast_off) = enc.tokenize(text).unwrap();
    let (reference, ref_off) = enc.tokenize_reference(text).unwrap();
    assert_eq!(fast, reference, "ids differ for {text:?}");
    assert_eq!(
        mask(text, &fast_off),
        mask(text, &ref_off),
        "masks differ for {text:?}"
    );
    // the fast offsets tile the text
    let mut at = 0;
    for &(s, e) in &fast_off {
        assert_eq!(s, at);
        at = e;
    }
    assert_eq!(at, text.len());
}

const PIECES: &[&str] = &[
    "hello",
    " world",
    "Hello",
    "WORLD",
    " McDonald's",
    "it's",
    " THEY'LL",
    "I'd",
    "don't",
    "x'S",
    "123",
    "4567890",
    " 3.14",
    "१२३",
    "ⅷ",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\u{a0}",
    "\u{3000}",
    "Zürich",
    "naïve",
    "e\u{301}",
    "Привет",
    " мир",
    "日本語のテキスト",
    "中文",
    "한국어",
    "مرحبا بالعالم",
    "שלום",
    "हिन्दी",
    "ไทย",
    "😀",
    "👩‍👩‍👧",
    "🇫🇷",
    "☀\u{fe0f}",
    "!?",
    "...",
    " --",
    "//",
    "/*x*/",
    "<b>&amp;</b>",
    "{\"a\": [1, 2]}",
    "a_b-c",
    "ǅemal",
    "ǈ",
    "ʰ",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    "<|endoftext|>",
    "<|sta",
    "rt|>",
    "<|",
    "|>",
    "assistant",
    "<|start|>assistant",
    "<|constrain|>",
    "\u{200b}",
    "\u{feff}",
    "x\u{0}y",
];

#[test]
fn fast_path_equals_tokenizers_on_the_real_tokenizer() {
    let dir = real_tokenizer_dir();
    let enc = encoder(dir.path());
    assert!(
        enc.is_fast(),
        "the real o200k_harmony tokenizer takes the fast path"
    );
    let golden = read_json(&fixtures().join("gpt-oss-chat/golden_real.json"));
    for row in golden["rows"].as_array().unwrap() {
        check(&enc, row["text"].as_str().unwrap());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..3000 {
        let n = rng.gen_range(1..40);
        let text: String = (0..n)
            .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
            .collect();
        check(&enc, &text);
    }
    // random code points too (valid chars of every plane)
    for _ in 0..500 {
        let n = rng.gen_range(1..30);
        let text: String = (0..n)
            .filter_map(|_| char::from_u32(rng.gen_range(0..0x1_1000)))
            .collect();
        check(&enc, &text);
    }
    check(&enc, "");
}

#[test]
fn other_tokenizers_take_the_reference_path() {
    let enc = encoder(&tiny_base());
    assert!(!enc.is_fast(), "the fixture's small BPE is not o200k");
    let (a, _) = enc.tokenize("<|start|>user<|message|>hi<|end|>").unwrap();
    let (b, _) = enc
        .tokenize_reference("<|start|>user<|message|>hi<|end|>")
        .unwrap();
    assert_eq!(a, b);
}
