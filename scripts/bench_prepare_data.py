#!/usr/bin/env python3
"""Synthetic chat JSONL for benchmarking `lora-qat prepare`, in the style of HuggingFaceH4/Multilingual-Thinking.

Usage: python scripts/bench_prepare_data.py --out FILE [--mb 100] [--seed 0]

Writes rows `{"reasoning_language": X, "messages": [...]}` until the file holds at least MB * 10^6 bytes.
Each conversation is a system message "reasoning language: X", then one user / assistant turn (about one row
in five has 2-3 turns); assistant messages carry `content` and `thinking` (thinking in language X, the user
and the answer in another language). As in the Hub data set (Arrow structs), system and user messages carry
`"thinking": null`; transformers drops None-valued keys before rendering. Row sizes are log-uniform between
about 200 B and 8 KB of JSON. Text mixes real words with syllable-built words (so the vocabulary is large and
the tokenizer's word cache does not flatter either side), numbers, punctuation and code-like lines, in Latin
(with diacritics), Cyrillic, Greek, Arabic, Devanagari, Thai, CJK, kana and Hangul scripts, plus emoji.
Deterministic: the same --seed and --mb give the same bytes. Only the standard library is used.
"""

import argparse
import json
import math
import random

# language -> (real words, syllables, sentence end, word separator, approx bytes per char)
LANGS = {
    "English": ("the a model answer because question think first then number value result simple so we "
                "need check step total which means however therefore example".split(),
                "ba be ri to na ken sel mor th str ing ion ed er".split(), ". ", " ", 1),
    "French": ("le la les une des parce que donc réponse question d’abord ensuite nombre valeur résultat "
               "très être où déjà voilà çà naïve cœur".split(),
               "é è ê à ou on ment tion eau ai re qu ç".split(), ". ", " ", 1.05),
    "German": ("der die das und weil also Antwort Frage zuerst dann Zahl Wert Ergebnis größer Straße über "
               "schön müssen Übung Ärger Öl".split(),
               "ge ver ung keit lich sch st ä ö ü ß en er".split(), ". ", " ", 1.05),
    "Spanish": ("el la los una porque entonces respuesta pregunta primero luego número valor resultado "
                "niño año también está así".split(),
                "ción ñ á é í ó ú ar er ir os as".split(), ". ", " ", 1.05),
    "Italian": ("il lo la gli perché quindi risposta domanda prima poi numero valore risultato città "
                "così più già".split(), "zione à è ì ò ù are ere ire gli".split(), ". ", " ", 1.03),
    "Russian": ("и в не что потому ответ вопрос сначала затем число значение результат очень".split(),
                "ка ни ро ст пр ов ен ть ий ая ое ые щ ж".split(), ". ", " ", 1.9),
    "Greek": ("και το η ότι επειδή απάντηση ερώτηση πρώτα μετά αριθμός τιμή αποτέλεσμα".split(),
              "κα λο πρ στ ει ου ης ος ία ά έ ί ό".split(), ". ", " ", 1.9),
    "Arabic": ("في من على أن لأن الجواب السؤال أولا ثم العدد القيمة النتيجة جدا".split(),
               "ال بـ ت ن م ر س ك ة ي و ا ل".split(), ". ", " ", 1.9),
    "Hindi": ("और में है कि क्योंकि उत्तर प्रश्न पहले फिर संख्या मान परिणाम बहुत".split(),
              "क का की र रा ना ते स्त प्र ं ः".split(), "। ", " ", 2.7),
    "Thai": ("และ ใน ที่ เพราะ คำตอบ คำถาม ก่อน แล้ว ตัวเลข ค่า ผลลัพธ์".split(),
             "กา นา ริ โต เก ส ม ง ค่ ๆ".split(), " ", "", 2.9),
    "Japanese": ("は が を に ので 答え 質問 まず 次に 数 値 結果 とても です ます".split(),
                 "か き く け こ さ し す た ち つ な に ア イ ウ カ キ ン".split(), "。", "", 3),
    "Chinese": ("的 是 在 因为 所以 答案 问题 首先 然后 数字 值 结果 非常".split(), None, "。", "", 3),
    "Korean": ("그리고 에서 이다 왜냐하면 답 질문 먼저 그다음 숫자 값 결과 매우".split(), None, ". ", " ", 2.5),
}
LANG_NAMES = list(LANGS)
LANG_WEIGHTS = [30, 8, 8, 8, 5, 6, 3, 5, 4, 3, 8, 8, 4]
EMOJI = "🙂 😊 🤔 👍 👍🏽 🚀 ✨ 🎉 🌍 🔵 ☀️ 👩‍💻 🇫🇷 🇯🇵 ❤️".split()
PUNCT = [", ", "; ", ": ", " — ", " (", ") ", " “", "” ", " «", "» ", "? ", "! "]


def make_word(rng, lang):
    words, syl, _, _, _ = LANGS[lang]
    if syl is None:  # CJK ideographs / Hangul: random code points from the common blocks
        lo, hi = (0x4E00, 0x7FFF) if lang == "Chinese" else (0xAC00, 0xD7A3)
        return "".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randrange(1, 4)))
    return "".join(rng.choice(syl) for _ in range(rng.randrange(2, 5)))


def text(rng, lang, n_bytes):
    words, _, end, sep, bpc = LANGS[lang]
    n_chars = max(8, int(n_bytes / bpc))
    out, n = [], 0
    while n < n_chars:
        r = rng.random()
        if r < 0.62:
            w = rng.choice(words)
        elif r < 0.86:
            w = make_word(rng, lang)
        elif r < 0.91:
            w = str(rng.randrange(10 ** rng.randrange(1, 8)))
        elif r < 0.93:
            w = rng.choice(EMOJI)
        elif r < 0.95:
            w = "`x_%d = f(%d, %.3f)`" % (rng.randrange(100), rng.randrange(1000), rng.random())
        elif r < 0.975:
            w = rng.choice(PUNCT).strip() or ","
        else:
            w = end.strip() + ("\n\n" if rng.random() < 0.3 else "\n")
        if rng.random() < 0.05 and lang in ("English", "French", "German", "Spanish", "Italian"):
            w = w.capitalize()
        out.append(w)
        n += len(w) + len(sep)
    s = sep.join(out).strip()
    return s + end.strip()


def row(rng):
    target = math.exp(rng.uniform(math.log(200), math.log(8000)))
    rlang = rng.choices(LANG_NAMES, LANG_WEIGHTS)[0]
    ulang = rlang if rng.random() < 0.4 else rng.choices(LANG_NAMES, LANG_WEIGHTS)[0]
    turns = 1 if rng.random() < 0.8 else rng.randrange(2, 4)
    body = max(60.0, target - 150 - 80 * turns)  # JSON keys/roles overhead
    per_turn = body / turns
    msgs = [{"role": "system", "content": f"reasoning language: {rlang}", "thinking": None}]
    for _ in range(turns):
        f_user, f_think = rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.5)
        msgs.append({"role": "user", "content": text(rng, ulang, per_turn * f_user), "thinking": None})
        msgs.append({"role": "assistant", "content": text(rng, ulang, per_turn * (1 - f_user - f_think)),
                     "thinking": text(rng, rlang, per_turn * f_think)})
    return {"reasoning_language": rlang, "messages": msgs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    limit, total, rows = int(a.mb * 1_000_000), 0, 0
    with open(a.out, "wb") as f:
        while total < limit:
            line = (json.dumps(row(rng), ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            total += len(line)
            rows += 1
    print(json.dumps({"out": a.out, "rows": rows, "bytes": total, "seed": a.seed}))


if __name__ == "__main__":
    main()
