#!/usr/bin/env python3
"""A small labelled set for `ptrain finetune`: fortunes from Debian's `fortunes` package labelled
by the file they come from (computers, science, politics, ... : the topic).

    python3 scripts/fortune_labels.py [--dir /usr/share/games/fortunes] [--sources computers science politics]
                                      [--val-fraction 0.2] [--max-chars 400] --out DIR

Writes DIR/train.jsonl and DIR/val.jsonl, one {"text": ..., "label": SOURCE} per line. A fortune
goes to val when the first 8 bytes of SHA-256(source + text) read as an integer fall below
val_fraction * 2^64: deterministic, independent of order. Fortunes longer than --max-chars are
skipped (the model sees at most seq_len - 2 tokens anyway). Standard library only.
"""
import argparse
import hashlib
import json
import os
import sys


def fortunes(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    parts, cur = [], []
    for line in text.split("\n"):
        if line == "%":
            parts.append("\n".join(cur).strip())
            cur = []
        else:
            cur.append(line)
    parts.append("\n".join(cur).strip())
    return [p for p in parts if p]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/usr/share/games/fortunes")
    ap.add_argument("--sources", nargs="+", default=["computers", "science", "politics"])
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--max-chars", type=int, default=400)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    counts = {}
    with open(os.path.join(a.out, "train.jsonl"), "w") as tr, open(os.path.join(a.out, "val.jsonl"), "w") as va:
        for src in a.sources:
            path = os.path.join(a.dir, src)
            if not os.path.isfile(path):
                sys.exit(f"{path}: not found (is the fortunes package installed?)")
            for text in fortunes(path):
                if len(text) > a.max_chars:
                    continue
                h = int.from_bytes(hashlib.sha256((src + "\0" + text).encode()).digest()[:8], "little")
                split = "val" if h < a.val_fraction * 2 ** 64 else "train"
                (va if split == "val" else tr).write(json.dumps({"text": text, "label": src}) + "\n")
                counts[(src, split)] = counts.get((src, split), 0) + 1
    for (src, split), n in sorted(counts.items()):
        print(f"{src:12s} {split:5s} {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
