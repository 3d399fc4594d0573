#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# perplexity_reference.py -- PyTorch's perplexity of a model folder over a
# text file, with exactly the sliding-window protocol of `layerpipe
# perplexity` (see src/cli/cmd_perplexity.c): the file is encoded whole
# with HF `tokenizers` from the folder's tokenizer.json; window k covers
# tokens [k*S, k*S + W); every token from position 1 on is scored once, by
# the first window holding it with context. MLX folders are dequantized in
# float32 (tools/hf_reference.py). Also the unigram baseline: a unigram
# model fit (add-one smoothed) on --train-text's tokens, scored on the same
# tokens. Prints one JSON line.
#
#   python3 tools/perplexity_reference.py --model DIR --text valid.txt \
#       [--train-text train.txt] [--window 512] [--stride 256] [--ids ids.txt]
# --ids: token ids written by `layerpipe tokenize -m DIR --ids --file TEXT`;
# the script reports whether they equal HF's.
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--train-text")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=0)
    ap.add_argument("--ids")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    text = open(a.text, encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    out = {"tokens": len(ids)}
    if a.ids:
        theirs = [int(x) for x in open(a.ids).read().split()]
        out["layerpipe_ids_equal"] = theirs == ids
        if theirs != ids:
            first = next((i for i, (x, y) in enumerate(zip(theirs, ids)) if x != y),
                         min(len(theirs), len(ids)))
            out["first_id_difference"] = first
    torch, device = hf_reference.setup_torch(a.device)
    model = hf_reference.load_model(a.model, torch, device)
    n, W = len(ids), min(a.window, len(ids))
    S = a.stride or max(W // 2, 1)
    S = min(S, max(W - 1, 1))
    n_windows = 1 + (max(n - W, 0) + S - 1) // S if n > W else 1
    total, scored, last = 0.0, 0, 0
    x = torch.tensor(ids, dtype=torch.long, device=device)
    for w in range(n_windows):
        b = w * S
        e = min(b + W, n)
        logits = model(x[b:e].unsqueeze(0)).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for p in range(max(last + 1, b + 1), e):
            total -= logp[p - 1 - b, ids[p]].item()
            scored += 1
        last = e - 1
    out.update({"window": W, "stride": S, "tokens_scored": scored, "mean_nll": total / scored,
                "perplexity": math.exp(total / scored)})
    if a.train_text:
        train = tok.encode(open(a.train_text, encoding="utf-8").read(), add_special_tokens=False).ids
        V = tok.get_vocab_size()
        counts = {}
        for t in train:
            counts[t] = counts.get(t, 0) + 1
        denom = len(train) + V
        nll = -sum(math.log((counts.get(ids[p], 0) + 1) / denom) for p in range(1, n)) / (n - 1)
        out.update({"unigram_mean_nll": nll, "unigram_perplexity": math.exp(nll)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
