#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Makes the tokenizer golden files from HF `tokenizers` and `transformers`
# (run where they are installed; offline: the tokenizer is read from a local
# folder holding tokenizer.json and tokenizer_config.json).
#   corpus_ref.jsonl : per corpus line {"i", "ids", "decoded"} where ids =
#                      Tokenizer.encode(text).ids and decoded = decode(ids)
#   chat_ref.json    : per conversation {"name", "text", "ids"}: the prompt
#                      apply_chat_template(tokenize=False) renders, and its ids
#   meta.json        : library versions used
# Usage: tools/tokenizer_reference.py TOKENIZER_DIR CORPUS.jsonl CONVERSATIONS.json OUT_DIR
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def load_hf_tokenizer(tok_dir):
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:  # fall back to the fast class with the template from the config
        print(f"AutoTokenizer failed ({e}); using PreTrainedTokenizerFast", file=sys.stderr)
        from transformers import PreTrainedTokenizerFast
        cfg = json.load(open(os.path.join(tok_dir, "tokenizer_config.json"), encoding="utf-8"))
        t = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
        t.chat_template = cfg["chat_template"]
        return t


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: tokenizer_reference.py TOKENIZER_DIR CORPUS.jsonl CONVERSATIONS.json OUT_DIR")
    tok_dir, corpus_path, conv_path, out_dir = sys.argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))

    n = 0
    with open(corpus_path, encoding="utf-8") as f, \
            open(os.path.join(out_dir, "corpus_ref.jsonl"), "w", encoding="utf-8") as out:
        for line in f:
            rec = json.loads(line)
            ids = tok.encode(rec["text"]).ids
            decoded = tok.decode(ids, skip_special_tokens=False)
            out.write(json.dumps({"i": rec["i"], "ids": ids, "decoded": decoded}, ensure_ascii=False) + "\n")
            n += 1
    print(f"corpus: {n} texts", file=sys.stderr)

    hf = load_hf_tokenizer(tok_dir)
    convs = json.load(open(conv_path, encoding="utf-8"))
    refs = []
    for conv in convs:
        kwargs = {}
        if "enable_thinking" in conv:
            kwargs["enable_thinking"] = conv["enable_thinking"]
        text = hf.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=False,
                                      add_generation_prompt=conv.get("add_generation_prompt", True),
                                      **kwargs)
        refs.append({"name": conv["name"], "text": text, "ids": tok.encode(text).ids})
    with open(os.path.join(out_dir, "chat_ref.json"), "w", encoding="utf-8") as out:
        json.dump(refs, out, ensure_ascii=False, indent=1)
        out.write("\n")
    print(f"chat: {len(refs)} conversations", file=sys.stderr)

    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as out:
        json.dump({"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                   "python": sys.version.split()[0]}, out, indent=1)
        out.write("\n")


if __name__ == "__main__":
    main()
