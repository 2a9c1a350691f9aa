#!/usr/bin/env python3
"""Reference throughput for `lora-qat prepare`: what a transformers user runs to tokenize a chat data set.

Usage: python scripts/bench_prepare_ref.py --tokenizer-dir DIR --data FILE [--threads 2] [--date YYYY-MM-DD]
                                           [--chunk 64]

DIR is a tokenizer dir (tokenizer.json, tokenizer_config.json, chat_template.jinja; see
`scripts/gen_chat_golden.py --tokenizer-dir-only DIR`). Every row `{"messages": [...]}` of the JSONL FILE is run
through `tok.apply_chat_template(messages, tokenize=True)["input_ids"]`, the work split over --threads worker
processes (multiprocessing.Pool, chunks of --chunk rows, like `datasets.map(num_proc=N)`), each worker
single-threaded (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false). The token ids are returned to the parent
(as datasets.map would collect them), but nothing is written.

Timing: the rows are read and parsed from FILE, and the workers are started and have loaded the tokenizer,
BEFORE the clock starts; `seconds` covers only sending the rows to the workers, render + tokenize, and
returning the ids. It therefore leaves out datasets' Arrow/cache overhead, so it flatters the reference.

--date pins the template's strftime_now (Current date) by patching transformers' module global `datetime`
(as gen_chat_golden.py does), so the rendered text equals `lora-qat prepare --chat-template-date DATE`;
without it the real date is used.

Prints ONE JSON line: {"rows", "tokens", "seconds", "tokens_per_s", "threads", "cpu_seconds", "tokens_per_cpu_s",
"transformers", "tokenizers", "date", "peak_rss_mb_parent", "peak_rss_mb_workers"}: cpu_seconds is user+sys
of the parent and the workers over the timed part (useful on a shared, busy machine), peak RSS is per process
(getrusage ru_maxrss).
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_chat_golden import pin_date  # noqa: E402

_TOK = None


def init_worker(tokenizer_dir, date):
    global _TOK
    from transformers import AutoTokenizer

    if date:
        pin_date(date)
    _TOK = AutoTokenizer.from_pretrained(tokenizer_dir)


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def work(rows):
    ids = [_TOK.apply_chat_template(m, tokenize=True)["input_ids"] for m in rows]
    return ids, os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, cpu_s()


def ready(_):
    time.sleep(0.01)
    return os.getpid(), _TOK is not None, cpu_s()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--date")
    ap.add_argument("--chunk", type=int, default=64)
    a = ap.parse_args()

    import tokenizers
    import transformers

    with open(a.data, encoding="utf-8") as f:
        rows = [json.loads(line)["messages"] for line in f if line.strip()]
    chunks = [rows[i:i + a.chunk] for i in range(0, len(rows), a.chunk)]

    tokens, worker_rss, cpu0, cpu1 = 0, {}, {}, {}
    if a.threads <= 1:
        init_worker(a.tokenizer_dir, a.date)
        c0, t0 = cpu_s(), time.perf_counter()
        for c in chunks:
            ids, _, _, _ = work(c)
            tokens += sum(len(x) for x in ids)
        seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
    else:
        with mp.get_context("fork").Pool(a.threads, initializer=init_worker,
                                         initargs=(a.tokenizer_dir, a.date)) as pool:
            # make sure every worker is up and has loaded the tokenizer before timing
            while len(cpu0) < a.threads:
                for pid, ok, c in pool.map(ready, range(a.threads * 4), chunksize=1):
                    cpu0[pid] = max(c, cpu0.get(pid, 0.0))
            c0, t0 = cpu_s(), time.perf_counter()
            for ids, pid, rss, c in pool.imap_unordered(work, chunks):
                tokens += sum(len(x) for x in ids)
                worker_rss[pid] = max(rss, worker_rss.get(pid, 0))
                cpu1[pid] = max(c, cpu1.get(pid, 0.0))
            seconds = time.perf_counter() - t0
            cpu = cpu_s() - c0 + sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)

    print(json.dumps({
        "rows": len(rows), "tokens": tokens, "seconds": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1), "threads": a.threads,
        "cpu_seconds": round(cpu, 3), "tokens_per_cpu_s": round(tokens / cpu, 1),
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "date": a.date or "real",
        "peak_rss_mb_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_workers": [round(v / 1024, 1) for v in worker_rss.values()],
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
