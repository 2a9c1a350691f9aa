#!/usr/bin/env python3
"""Golden chat rendering + tokenization of the real gpt-oss chat template / o200k_harmony tokenizer,
computed by transformers (the reference for `lora-qat prepare`).

Usage (from the repository root; needs `pip install transformers tokenizers jinja2`, no torch):
    .venv/bin/python scripts/gen_chat_golden.py [--out tests/fixtures/gpt-oss-chat/golden_real.json]
                                                [--date 2026-01-01]
    .venv/bin/python scripts/gen_chat_golden.py --tokenizer-dir-only DIR   # only build the tokenizer dir

Inputs: tests/fixtures/gpt-oss-chat/chat_template.jinja and tokenizer.json.gz. A tokenizer dir is built
(tokenizer.json, tokenizer_config.json with bos <|startoftext|>, eos <|return|>, pad <|endoftext|>,
chat_template.jinja) and loaded with transformers.AutoTokenizer.from_pretrained.

Date: the template prints "Current date: " + strftime_now("%Y-%m-%d"). transformers' strftime_now calls
`datetime.now()` through the module global `transformers.utils.chat_template_utils.datetime`; this script
PINS it by replacing that global with a datetime subclass whose now() is --date (see `pin_date`). It checks
that an unpatched render differs from the pinned one only in that date string.

For every row of `rows`:
    text  = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **kwargs)
    input_ids = tok.apply_chat_template(messages, tokenize=True, ...)["input_ids"]  (a BatchEncoding in 5.x)
    assert input_ids == tok(text, add_special_tokens=False).input_ids
    assistant_mask from tok(text, add_special_tokens=False, return_offsets_mapping=True) by RULE below.
`kwargs` holds everything passed to apply_chat_template besides the messages, add_generation_prompt and
tokenize: template variables (reasoning_effort, model_identity, builtin_tools) and `tools`.

`prompt_completion` rows follow TRL's conversational prompt-completion tokenization:
    prompt_ids = apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, **kwargs)
    input_ids  = apply_chat_template(prompt + completion, tokenize=True, **kwargs)
    completion_mask = [0] * len(prompt_ids) + [1] * (len(input_ids) - len(prompt_ids))
asserting that prompt_ids is a prefix of input_ids (TRL only warns when it is not; with `thinking` on the
completion message it is NOT a prefix, because the analysis message is inserted after the generation prompt
header, so these completions carry no thinking).
"""

import argparse
import datetime as _dt
import gzip
import json
import os
import random
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "gpt-oss-chat")
DEFAULT_DATE = "2026-01-01"
RULE = (
    "assistant_mask = 1 for tokens whose characters lie after '<|start|>assistant' up to and including the "
    "closing <|end|>/<|return|>/<|call|> (a token counts if its character offset span lies inside such a span; "
    "an assistant header left open by add_generation_prompt runs to the end of the text). No token straddles a "
    "span boundary in these rows (checked)."
)
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|startoftext|>",
    "eos_token": "<|return|>",
    "pad_token": "<|endoftext|>",
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": 131072,
    "clean_up_tokenization_spaces": False,
}


def make_tokenizer_dir(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with gzip.open(os.path.join(FIXTURES, "tokenizer.json.gz"), "rb") as src, \
            open(os.path.join(out_dir, "tokenizer.json"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copyfile(os.path.join(FIXTURES, "chat_template.jinja"), os.path.join(out_dir, "chat_template.jinja"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
    return out_dir


def pin_date(date_str):
    """Make transformers' strftime_now (used by chat templates) see `date_str` (YYYY-MM-DD, noon local)."""
    import transformers.utils.chat_template_utils as ctu

    y, m, d = (int(x) for x in date_str.split("-"))
    real = _dt.datetime

    class _Pinned(real):
        @classmethod
        def now(cls, tz=None):
            return real(y, m, d, 12, 0, 0, tzinfo=tz)

    assert ctu.datetime is real or ctu.datetime.__name__ == "_Pinned", "unexpected transformers layout"
    ctu.datetime = _Pinned
    return real


def unpin_date(real):
    import transformers.utils.chat_template_utils as ctu

    ctu.datetime = real


# ---------------------------------------------------------------------------------------------- data
def long_text(seed, n_chars):
    """Deterministic several-KB text: mixed prose, numbers, a code block with tabs/indentation."""
    rng = random.Random(seed)
    words = ("the model gradient quantization expert router attention layer token batch loss adapter "
             "rank alpha weight scale block mantissa exponent shard checkpoint memory throughput").split()
    intl = ["Straße", "größer", "déjà", "naïve", "café", "日本語", "テキスト", "中文", "한국어", "русский",
            "ελληνικά", "عربي", "हिन्दी", "ไทย", "🙂", "🚀", "—", "…", "“quoted”"]
    parts = []
    while sum(len(p) for p in parts) < n_chars:
        k = rng.randrange(4)
        if k == 0:
            parts.append("```python\ndef f(x, y=%d):\n    if x > %d:\n\treturn x * y  # tab-indented\n"
                         "    return [i ** 2 for i in range(%d)]\n```\n" % (rng.randrange(100), rng.randrange(1000),
                                                                           rng.randrange(10 ** 6)))
        elif k == 1:
            parts.append("%d.%d%% of %d items, id=%08x, t=%.6e; " % (rng.randrange(100), rng.randrange(100),
                                                                      rng.randrange(10 ** 9), rng.randrange(2 ** 32),
                                                                      rng.random()))
        else:
            n = rng.randrange(5, 25)
            s = " ".join(rng.choice(words) if rng.random() < 0.8 else rng.choice(intl) for _ in range(n))
            parts.append(s[0].upper() + s[1:] + rng.choice([". ", "! ", "? ", ".\n", ".\n\n", ";  "]))
    return "".join(parts)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Zürich, CH"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "description": "Forecast days", "default": 3},
                "hourly": {"type": "boolean", "default": False},
            },
            "required": ["location"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the documentation",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}, "description": "Filter tags"},
                "scores": {"type": "array", "items": {"type": "number"}, "nullable": True},
                "filters": {
                    "type": "object",
                    "properties": {"lang": {"type": "string"}, "year": {"type": "integer"}},
                    "required": ["lang"],
                },
                "limit": {"type": ["integer", "null"]},
                "note": {"type": "string", "nullable": True},
            },
            "required": ["query"],
        },
    },
}
NOW_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Current time, no arguments",
                                              "parameters": {"type": "object", "properties": {}}}}


def make_rows():
    L = long_text(1, 6000)
    rows = [
        dict(name="single_turn_system_thinking", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "system", "content": "reasoning language: French"},
            {"role": "user", "content": "Pourquoi le ciel est-il bleu ? Réponds en une phrase, s’il te plaît."},
            {"role": "assistant", "thinking": "L’utilisateur veut une phrase. Diffusion de Rayleigh : la "
             "lumière bleue (courte longueur d’onde) est davantage diffusée.",
             "content": "Parce que l’atmosphère diffuse davantage la lumière bleue — c’est la diffusion de Rayleigh."},
        ]),
        dict(name="multi_turn_thinking_low", kwargs={"reasoning_effort": "low"}, add_generation_prompt=False,
             messages=[
            {"role": "system", "content": "reasoning language: English"},
            {"role": "user", "content": "What is 17 + 25?"},
            {"role": "assistant", "thinking": "10+20=30, 7+5=12, total 42.", "content": "17 + 25 = 42."},
            {"role": "user", "content": "And times 3?"},
            {"role": "assistant", "thinking": "42*3 = 126.", "content": "42 × 3 = 126."},
            {"role": "user", "content": "Is 126 divisible by 7?"},
            {"role": "assistant", "thinking": "126 / 7 = 18 exactly, since 7*18 = 126.",
             "content": "Yes: 126 = 7 × 18."},
        ]),
        dict(name="multilingual_scripts_emoji", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "system", "content": "reasoning language: Japanese"},
            {"role": "user", "content": "空が青いのはなぜですか？ Auf Deutsch auch bitte: Größe, Straße, Ärger über Öl. "
             "Et en français : « déjà vu », naïve, cœur. لماذا السماء زرقاء؟ शुक्रिया! Спасибо. 谢谢。 감사합니다. "
             "ขอบคุณ. Ευχαριστώ. 🙂👍🏽👩‍👩‍👧‍👦🇫🇷🇯🇵 ✨ e\u0301 (decomposed)"},
            {"role": "assistant", "thinking": "ユーザーは多言語で質問している。レイリー散乱を説明する。🤔",
             "content": "レイリー散乱のためです。Auf Deutsch: Rayleigh-Streuung. "
             "بالعربية: بسبب تشتت رايلي. 中文：瑞利散射。🌍🔵"},
            {"role": "user", "content": "ありがとう！🎉"},
            {"role": "assistant", "thinking": "感謝に応える。", "content": "どういたしまして 😊 — de rien — gern geschehen — عفواً"},
        ]),
        dict(name="developer_high_identity", add_generation_prompt=False,
             kwargs={"reasoning_effort": "high",
                     "model_identity": "You are Kestrel, a careful assistant fine-tuned with lora-qat."},
             messages=[
            {"role": "developer", "content": "Always answer in haiku.\nNever use the letter 'z'."},
            {"role": "user", "content": "Describe the sea."},
            {"role": "assistant", "thinking": "5-7-5 syllables, avoid z.",
             "content": "Grey waves fold and break\nsalt wind carries gull voices\nthe tide keeps its time"},
        ]),
        dict(name="long_content", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "system", "content": "reasoning language: English"},
            {"role": "user", "content": "Summarise this document:\n\n" + L},
            {"role": "assistant", "thinking": long_text(2, 2500), "content": long_text(3, 4000)},
        ]),
        dict(name="tool_calls_full", kwargs={"tools": [WEATHER_TOOL, SEARCH_TOOL]}, add_generation_prompt=False,
             messages=[
            {"role": "system", "content": "You are a helpful travel assistant."},
            {"role": "user", "content": "What's the weather in Zürich & Paris? Use <metric> units, it's 'urgent'."},
            {"role": "assistant", "thinking": "Need Zürich first.", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather",
                                                  "arguments": {"location": "Zürich, CH", "unit": "celsius",
                                                                "note": "<b>&'x'</b>"}}}]},
            {"role": "tool", "content": "{\"temp_c\": 21.5, \"condition\": \"sunny ☀️\", \"html\": \"<b>warm</b> & 'dry'\"}"},
            {"role": "assistant", "content": "Zürich is done, now Paris.", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather",
                                                  "arguments": {"location": "Paris, FR", "days": 1, "hourly": True,
                                                                "extra": None, "ratio": 0.5, "list": [1, "two"]}}}]},
            {"role": "tool", "content": "Paris: 18 °C, cloudy"},
            {"role": "assistant", "thinking": "Both results in; compose answer.",
             "content": "Zürich: 21.5 °C, sunny ☀️. Paris: 18 °C, cloudy."},
        ]),
        dict(name="tool_call_pending_builtin", add_generation_prompt=False,
             kwargs={"tools": [NOW_TOOL, SEARCH_TOOL], "builtin_tools": ["browser", "python"],
                     "reasoning_effort": "low"},
             messages=[
            {"role": "user", "content": "What time is it, and find docs about MXFP4?"},
            {"role": "assistant", "thinking": "Call get_time first; analysis is kept because no final follows.",
             "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}]},
        ]),
        dict(name="identity_medium_no_system", add_generation_prompt=False,
             kwargs={"reasoning_effort": "medium", "model_identity": "Tu es Ébène, un assistant 🤖 (modèle « maison »)."},
             messages=[
            {"role": "user", "content": "Qui es-tu ?"},
            {"role": "assistant", "thinking": "Se présenter brièvement.", "content": "Je suis Ébène, un assistant."},
        ]),
        dict(name="generation_prompt", kwargs={}, add_generation_prompt=True, messages=[
            {"role": "system", "content": "reasoning language: German"},
            {"role": "user", "content": "Wie viele Beine hat eine Spinne?"},
            {"role": "assistant", "thinking": "Spinnentiere haben acht Beine.", "content": "Eine Spinne hat 8 Beine."},
            {"role": "user", "content": "Und ein Käfer?"},
        ]),
        dict(name="no_system_no_thinking", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "user", "content": "Sort 3, 1, 2."},
            {"role": "assistant", "content": "1, 2, 3"},
            {"role": "user", "content": "Reverse it."},
            {"role": "assistant", "content": "3, 2, 1"},
        ]),
        dict(name="whitespace_edges", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "system", "content": "  reasoning language: English  \n"},
            {"role": "user", "content": "  leading spaces\n\n\ttab\r\nCRLF line  trailing   \n\n\nnbsp\u00a0here, "
             "zero\u200bwidth, line\u2028sep, para\u2029sep, bom\ufeff."},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": " "},
            {"role": "assistant", "thinking": "\n  indented thought\n\n", "content": "\n\n  result:\n\t- a\n\t- b  \n"},
        ]),
        dict(name="special_token_literals", kwargs={}, add_generation_prompt=False, messages=[
            {"role": "user", "content": "What does <|endoftext|> mean? And <|startoftext|>, <|reserved_200000|>, "
             "or a broken <|end token?"},
            {"role": "assistant", "thinking": "Explain <|endoftext|> as a document separator.",
             "content": "<|endoftext|> separates documents; '<|end' alone is plain text."},
        ]),
        dict(name="empty_system_and_later_system", kwargs={"reasoning_effort": "high"}, add_generation_prompt=False,
             messages=[
            {"role": "system", "content": ""},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "system", "content": "This later system message is dropped by the template."},
            {"role": "user", "content": "Bye."},
            {"role": "assistant", "thinking": "Say goodbye.", "content": "Goodbye 👋"},
        ]),
    ]
    pcs = [
        dict(name="pc_german", kwargs={},
             prompt=[{"role": "system", "content": "reasoning language: German"},
                     {"role": "user", "content": "Was ist die Hauptstadt von Österreich?"}],
             completion=[{"role": "assistant", "content": "Die Hauptstadt von Österreich ist Wien."}]),
        dict(name="pc_multi_turn", kwargs={"reasoning_effort": "low"},
             prompt=[{"role": "user", "content": "Name a primary colour."},
                     {"role": "assistant", "thinking": "dropped by the template", "content": "Red."},
                     {"role": "user", "content": "Another one, in Japanese?"}],
             completion=[{"role": "assistant", "content": "青（あお）— blue. 🔵"}]),
        dict(name="pc_developer_identity", kwargs={"reasoning_effort": "high", "model_identity": "You are Tern."},
             prompt=[{"role": "developer", "content": "Answer with one word."},
                     {"role": "user", "content": "Opposite of 'cold'? (Arabic: بارد)"}],
             completion=[{"role": "assistant", "content": "Hot / حار"}]),
    ]
    return rows, pcs


# ------------------------------------------------------------------------------------------- golden
def assistant_char_spans(text):
    spans, head, i = [], "<|start|>assistant", 0
    while True:
        j = text.find(head, i)
        if j < 0:
            return spans
        s = j + len(head)
        ends = [(text.find(t, s), t) for t in ("<|end|>", "<|return|>", "<|call|>")]
        ends = [(k, t) for k, t in ends if k >= 0]
        if not ends:  # open generation-prompt header
            spans.append((s, len(text)))
            return spans
        k, t = min(ends)
        spans.append((s, k + len(t)))
        i = k + len(t)


def assistant_mask(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_char_spans(text)
    mask = []
    for st, en in enc["offset_mapping"]:
        for s, e in spans:
            straddle = (st < s < en) or (st < e < en)
            assert not straddle, f"token ({st},{en}) straddles span ({s},{e}): {text[st:en]!r}"
        mask.append(int(any(s <= st and en <= e for s, e in spans)))
    return enc["input_ids"], mask


def ids_of(out):
    return list(out["input_ids"]) if not isinstance(out, list) else out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(FIXTURES, "golden_real.json"))
    ap.add_argument("--date", default=DEFAULT_DATE)
    ap.add_argument("--tokenizer-dir-only", metavar="DIR")
    a = ap.parse_args()
    if a.tokenizer_dir_only:
        make_tokenizer_dir(a.tokenizer_dir_only)
        return

    import jinja2
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    tmp = tempfile.mkdtemp(prefix="gpt-oss-tok-")
    try:
        tok = AutoTokenizer.from_pretrained(make_tokenizer_dir(tmp))
    finally:
        shutil.rmtree(tmp)
    assert tok.eos_token == "<|return|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token == "<|startoftext|>"
    assert tok.chat_template is not None

    rows, pcs = make_rows()

    # the unpatched render differs from the pinned one only by the date string
    probe = rows[0]["messages"]
    real_text = tok.apply_chat_template(probe, tokenize=False)
    real = pin_date(a.date)
    pinned_text = tok.apply_chat_template(probe, tokenize=False)
    assert f"Current date: {a.date}\n" in pinned_text
    today = [_dt.date.today().isoformat(), real.now().date().isoformat()]
    assert any(real_text == pinned_text.replace(a.date, d) for d in today), "date pinning changed more than the date"

    out_rows = []
    for r in rows:
        kw = dict(r["kwargs"])
        agp = r["add_generation_prompt"]
        text = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=agp, **kw)
        ids = ids_of(tok.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=agp, **kw))
        ids2, mask = assistant_mask(tok, text)
        assert ids == list(ids2) == tok(text, add_special_tokens=False).input_ids, r["name"]
        assert f"Current date: {a.date}\n" in text
        assert sum(mask) > 0 and tok.decode(ids) == text, r["name"]
        out_rows.append({"name": r["name"], "messages": r["messages"], "kwargs": r["kwargs"],
                         "add_generation_prompt": agp, "text": text, "input_ids": ids, "assistant_mask": mask})
        print(f"{r['name']:32s} chars={len(text):6d} tokens={len(ids):5d} assistant={sum(mask):5d}", file=sys.stderr)

    out_pcs = []
    for p in pcs:
        kw = p["kwargs"]
        prompt_ids = ids_of(tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=True, **kw))
        full_ids = ids_of(tok.apply_chat_template(p["prompt"] + p["completion"], tokenize=True, **kw))
        assert full_ids[: len(prompt_ids)] == prompt_ids, p["name"]
        cmask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
        out_pcs.append({"name": p["name"], "prompt": p["prompt"], "completion": p["completion"], "kwargs": kw,
                        "input_ids": full_ids, "completion_mask": cmask})
        print(f"{p['name']:32s} tokens={len(full_ids):5d} completion={sum(cmask):5d}", file=sys.stderr)
    unpin_date(real)

    golden = {
        "generator": (f"scripts/gen_chat_golden.py: transformers {transformers.__version__}, tokenizers "
                      f"{tokenizers.__version__}, jinja2 {jinja2.__version__}, python {sys.version.split()[0]}; "
                      "AutoTokenizer.from_pretrained + apply_chat_template"),
        "date": a.date,
        "date_note": "strftime_now pinned to this date by patching transformers.utils.chat_template_utils.datetime",
        "rule": RULE,
        "kwargs_note": "kwargs = every apply_chat_template argument besides messages/add_generation_prompt/tokenize "
                       "(template variables, and `tools`)",
        "rows": out_rows,
        "prompt_completion_rule": "TRL conversational prompt-completion: prompt_ids = apply_chat_template(prompt, "
                                  "add_generation_prompt=True); input_ids = apply_chat_template(prompt + completion); "
                                  "completion_mask = 0 for the first len(prompt_ids) tokens, 1 after (prefix asserted)",
        "prompt_completion": out_pcs,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes, {len(out_rows)} rows, {len(out_pcs)} prompt/completion)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
