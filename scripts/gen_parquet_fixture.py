"""Parquet fixtures for the data tests, written by pyarrow (what Hugging Face datasets use).

    .venv/bin/python scripts/gen_parquet_fixture.py

- tests/fixtures/data/chat.parquet: tests/fixtures/tiny-gpt-oss/data/train.jsonl as Parquet
  (messages = list<struct<role, content, thinking>>, absent fields null, like datasets writes them;
  two row groups of 16 and 8 rows, snappy).
- tests/fixtures/data/other_columns.parquet: a table with columns `question`, `answer` only.
"""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "data")


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = [json.loads(l) for l in open(os.path.join(ROOT, "tests/fixtures/tiny-gpt-oss/data/train.jsonl"))]
    msg = pa.struct([("role", pa.string()), ("content", pa.string()), ("thinking", pa.string())])
    table = pa.table({
        "reasoning_language": pa.array([r["reasoning_language"] for r in rows], pa.string()),
        "messages": pa.array([[{"role": m["role"], "content": m["content"], "thinking": m.get("thinking")}
                               for m in r["messages"]] for r in rows], pa.list_(msg)),
    })
    pq.write_table(table, os.path.join(OUT, "chat.parquet"), row_group_size=16, compression="snappy")
    other = pa.table({"question": ["a?", "b?"], "answer": ["a", "b"]})
    pq.write_table(other, os.path.join(OUT, "other_columns.parquet"))


if __name__ == "__main__":
    main()
