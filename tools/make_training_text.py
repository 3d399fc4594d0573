#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Build the training text for layerpipe's bundled tiny model.

Sources (public-domain / freely redistributable English text from Debian):
  - bible-kjv-text (+ bible-kjv for the `bible` reader): the King James Bible,
    one document per chapter, one verse per line, verse references dropped.
  - fortunes, fortunes-min: /usr/share/games/fortunes/* (plain text files,
    fortunes separated by '%' lines), one document per fortune.

Install: apt-get install -y bible-kjv bible-kjv-text fortunes fortunes-min

Output (deterministic, stdlib only):
  OUT_DIR/train.txt, OUT_DIR/valid.txt: documents, each ending in "\\n" and
  followed by the literal "<|endoftext|>" (so a tokenizer that splits special
  tokens reads the same token stream the training used). Every 33rd document
  (index % 33 == 32) goes to valid.txt (~3%).

Usage: tools/make_training_text.py [OUT_DIR]   (default .dev/tiny-train)
"""
import os
import re
import subprocess
import sys

EOT = "<|endoftext|>"
FORTUNE_DIR = "/usr/share/games/fortunes"
SKIP_FORTUNES = {"ascii-art"}  # pictures, not prose
REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def kjv_docs():
    out = subprocess.run(["bible", "-f", "Genesis1:1-Revelation22:21"],
                         check=True, capture_output=True, text=True).stdout
    docs, cur, key = [], [], None
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        m = REF.match(line)
        if not m:
            raise SystemExit(f"unexpected bible line: {line!r}")
        k = (m.group(1), m.group(2))
        if k != key and cur:
            docs.append("\n".join(cur))
            cur = []
        key = k
        cur.append(" ".join(m.group(4).split()))
    if cur:
        docs.append("\n".join(cur))
    if len(docs) != 1189:
        raise SystemExit(f"expected 1189 KJV chapters, got {len(docs)}")
    return docs


def clean_fortune(text):
    text = re.sub(r".\x08", "", text)  # overstrike (x BS y) -> y
    text = CTRL.sub("", text.replace("\t", "        "))
    lines = []
    for line in text.split("\n"):
        line = line.rstrip()
        body = line.lstrip(" ")
        indent = min(len(line) - len(body), 8)
        body = re.sub(r" {3,}", "  ", body)
        lines.append(" " * indent + body if body else "")
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text


def fortune_docs():
    docs = []
    names = sorted(n for n in os.listdir(FORTUNE_DIR)
                   if not n.endswith((".dat", ".u8")) and n not in SKIP_FORTUNES
                   and os.path.isfile(os.path.join(FORTUNE_DIR, n))
                   and not os.path.islink(os.path.join(FORTUNE_DIR, n)))
    seen = set()
    for n in names:
        raw = open(os.path.join(FORTUNE_DIR, n), "rb").read().decode("utf-8", "replace")
        for part in re.split(r"(?m)^%\s*$", raw):
            t = clean_fortune(part)
            if len(t) < 8 or "\ufffd" in t or t in seen:
                continue
            letters = sum(c.isalpha() or c.isspace() for c in t)
            if letters < 0.75 * len(t):  # ascii pictures, tables of symbols
                continue
            seen.add(t)
            docs.append(t)
    return docs


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else ".dev/tiny-train"
    os.makedirs(out_dir, exist_ok=True)
    kjv, fort = kjv_docs(), fortune_docs()
    docs = kjv + fort
    train, valid = [], []
    for i, d in enumerate(docs):
        (valid if i % 33 == 32 else train).append(d + "\n" + EOT)
    for name, part in (("train.txt", train), ("valid.txt", valid)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(part))
    print(f"kjv chapters {len(kjv)}, fortunes {len(fort)}; "
          f"train docs {len(train)} ({sum(map(len, train))} chars), "
          f"valid docs {len(valid)} ({sum(map(len, valid))} chars)")


if __name__ == "__main__":
    main()
