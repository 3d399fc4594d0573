#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Train layerpipe's bundled tiny Qwen3-architecture model (one GPU).

Input: DATA/train.txt and DATA/valid.txt from tools/make_training_text.py
(documents each followed by the literal "<|endoftext|>"), plus a Qwen3
tokenizer_config.json to take the chat template from (--qwen-tokenizer-config).

Steps, all deterministic from --seed (up to GPU floating-point reduction
order):
  1. byte-level BPE tokenizer (HF tokenizers), --vocab BPE tokens plus
     <|endoftext|> <|im_start|> <|im_end|> right after them, saved in exactly
     Qwen3's tokenizer.json structure (NFC, Split(Qwen3 regex, Isolated),
     ByteLevel without regex, ByteLevel decoder and post-processor).
  2. a Qwen3ForCausalLM (tied embeddings, GQA, q/k norms), trained with AdamW,
     warmup + cosine, bf16 autocast, on packed sequences of the training
     documents. The text is small, so training is data-limited rather than
     compute-limited: a short sweep over the number of epochs runs, each
     candidate is scored on a dev split carved from train.txt (every 50th
     document), and the candidate (and epoch) with the lowest dev loss is kept.
     valid.txt is never used for selection.
  3. reports validation cross-entropy / perplexity of the kept model on
     valid.txt and a unigram baseline, samples some text, and saves an HF
     folder (bf16 safetensors, config.json, generation_config.json,
     tokenizer.json, tokenizer_config.json).

Usage:
  python3 tools/train_tiny.py --data .dev/tiny-train --out OUT_DIR \
      --qwen-tokenizer-config .dev/tiny-train/qwen3_tokenizer_config.json
(that file is Qwen3's tokenizer_config.json: `tools/fetch-qwen3-tokenizer.sh DIR`
prints the folder holding it). The bundled model was made with --seed 1234 on
one H200 in about a minute of training; then, on the CPU machine:
  layerpipe quantize -m OUT_DIR -o models/layerpipe-tiny-8bit --bits 8 --group 64
"""
import argparse
import copy
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3's tokenizer.json, verbatim, minus vocabulary and merges.
BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}
QWEN3_STRUCTURE = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN3_REGEX}, "behavior": "Isolated",
         "invert": False},
        dict(BYTELEVEL)]},
    "post_processor": dict(BYTELEVEL),
    "decoder": dict(BYTELEVEL),
}
QWEN3_MODEL_FIELDS = {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False}


def log(*a):
    print(*a, flush=True)


def read_docs(path):
    text = open(path, encoding="utf-8").read()
    docs = text.split(EOT)
    if docs and docs[-1].strip() == "":
        docs.pop()
    return docs


# ---------------------------------------------------------------- tokenizer --
def train_tokenizer(docs, vocab):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    n_bpe = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False,
                                       rstrip=False, single_word=False)
                            for t in (EOT, IM_START, IM_END)])
    # Force exactly Qwen3's structure (only vocab/merges/added ids differ).
    j = json.loads(tok.to_str())
    for k, v in QWEN3_STRUCTURE.items():
        j[k] = copy.deepcopy(v)
    m = j["model"]
    vocab_map, merges = m["vocab"], m["merges"]
    j["model"] = dict(QWEN3_MODEL_FIELDS, vocab=vocab_map, merges=merges)
    added = []
    for i, t in enumerate((EOT, IM_START, IM_END)):
        added.append({"id": n_bpe + i, "content": t, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    j["added_tokens"] = added
    order = ["version", "truncation", "padding", "added_tokens", "normalizer",
             "pre_tokenizer", "post_processor", "decoder", "model"]
    j = {k: j[k] for k in order}
    s = json.dumps(j, ensure_ascii=False, indent=2)
    tok2 = Tokenizer.from_str(s)
    assert tok2.token_to_id(EOT) == n_bpe and tok2.token_to_id(IM_END) == n_bpe + 2
    assert len(vocab_map) == n_bpe and max(vocab_map.values()) == n_bpe - 1
    return tok2, s, n_bpe


def tokenizer_config(template_path, n_bpe):
    if template_path and os.path.exists(template_path):
        cfg = json.load(open(template_path, encoding="utf-8"))
    else:
        log(f"WARNING: no Qwen3 tokenizer_config.json at {template_path!r}: no chat_template")
        cfg = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None,
               "clean_up_tokenization_spaces": False, "errors": "replace",
               "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
               "unk_token": None}
    cfg["added_tokens_decoder"] = {
        str(n_bpe + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
        for i, t in enumerate((EOT, IM_START, IM_END))}
    cfg["additional_special_tokens"] = [IM_START, IM_END]
    cfg["bos_token"] = None
    cfg["eos_token"] = EOT
    cfg["pad_token"] = EOT
    cfg["unk_token"] = None
    cfg["model_max_length"] = 2048
    return cfg


def encode_docs(tok, docs, eot_id):
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot_id)
    return np.array(ids, dtype=np.int64)


# -------------------------------------------------------------------- model --
def make_model(args, vocab_size, eot_id, im_end_id):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.inter,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True,
        hidden_act="silu", attention_bias=False, attention_dropout=0.0,
        use_sliding_window=False, bos_token_id=None, eos_token_id=eot_id,
        pad_token_id=eot_id, initializer_range=0.02)
    return Qwen3ForCausalLM(cfg)


def batches(stream, seq, batch, gen):
    """One epoch of (x, y) batches: random start offset, shuffled chunks."""
    off = int(torch.randint(0, seq, (1,), generator=gen))
    n = (len(stream) - off - 1) // seq
    starts = off + seq * torch.randperm(n, generator=gen)
    for b in range(0, n - batch + 1, batch):
        idx = starts[b:b + batch, None] + torch.arange(seq + 1)[None, :]
        yield idx


@torch.no_grad()
def eval_loss(model, stream_t, seq, dev):
    """Mean next-token cross-entropy over non-overlapping windows of seq+1."""
    model.eval()
    tot, cnt = 0.0, 0
    n = (len(stream_t) - 1) // seq
    for b in range(0, n, 64):
        rows = [stream_t[i * seq:i * seq + seq + 1] for i in range(b, min(n, b + 64))]
        x = torch.stack(rows).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               x[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += x[:, 1:].numel()
    rest = stream_t[n * seq:]
    if len(rest) > 1:
        x = rest[None].to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1]).logits
        tot += F.cross_entropy(logits.float()[0], x[0, 1:], reduction="sum").item()
        cnt += x.shape[1] - 1
    model.train()
    return tot / cnt


def train_one(args, epochs, train_t, dev_t, vocab_size, ids, dev, deadline):
    torch.manual_seed(args.seed)
    model = make_model(args, vocab_size, *ids).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    steps_per_epoch = ((len(train_t) - args.seq - 1) // args.seq) // args.batch
    total = steps_per_epoch * epochs
    warm = min(args.warmup, total // 10)

    def lr_at(s):
        if s < warm:
            return args.lr * (s + 1) / warm
        p = min(1.0, (s - warm) / max(1, total - warm))
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * p))

    gen = torch.Generator().manual_seed(args.seed)
    train_gpu = train_t.to(dev)
    best = (float("inf"), None, -1)
    step, t0 = 0, time.time()
    for ep in range(epochs):
        for idx in batches(train_t, args.seq, args.batch, gen):
            chunk = train_gpu[idx.to(dev)]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=chunk[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, vocab_size),
                                   chunk[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == 1:
                torch.cuda.synchronize()
                el = time.time() - t0
                log(f"  [E{epochs}] step {step}/{total} ep {ep + 1} loss {loss.item():.4f} "
                    f"lr {lr_at(step - 1):.2e} {step * args.batch * args.seq / el / 1e3:.0f} "
                    f"ktok/s {el:.1f}s")
        d = eval_loss(model, dev_t, args.seq, dev)
        log(f"  [E{epochs}] epoch {ep + 1}/{epochs} step {step} train {loss.item():.4f} "
            f"dev {d:.4f} (ppl {math.exp(d):.2f}) {time.time() - t0:.1f}s")
        if d < best[0]:
            best = (d, {k: v.detach().clone() for k, v in model.state_dict().items()}, ep + 1)
        if time.time() > deadline:
            log(f"  [E{epochs}] time budget reached, stopping after epoch {ep + 1}")
            break
    model.load_state_dict(best[1])
    return model, best[0], best[2], step, time.time() - t0


# --------------------------------------------------------------- sampling --
@torch.no_grad()
def generate(model, tok, prompt, n, dev, greedy, temp=0.8, top_k=40, top_p=0.95, rep=1.1,
             stop=(), gen=None):
    model.eval()
    ids = tok.encode(prompt, add_special_tokens=False).ids
    x = torch.tensor([ids], device=dev)
    out = []
    for _ in range(n):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits[0, -1].float()
        if greedy:
            nxt = int(logits.argmax())
        else:
            seen = torch.unique(x[0])
            sl = logits[seen]
            logits[seen] = torch.where(sl > 0, sl / rep, sl * rep)
            logits = logits / temp
            v, i = torch.topk(logits, top_k)
            p = torch.softmax(v, -1)
            c = torch.cumsum(p, -1)
            keep = (c - p) < top_p
            p = p * keep
            p = p / p.sum()
            nxt = int(i[torch.multinomial(p.cpu(), 1, generator=gen)])
        if nxt in stop:
            break
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=dev)], 1)
    return tok.decode(ids + out, skip_special_tokens=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".dev/tiny-train")
    ap.add_argument("--out", required=True)
    ap.add_argument("--qwen-tokenizer-config",
                    default=".dev/tiny-train/qwen3_tokenizer_config.json")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary (before specials)")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr", type=float, default=1.5e-4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--epochs", default="8,16,32",
                    help="comma list: candidate run lengths in epochs (best dev loss kept)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="wall-clock budget for all training runs")
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args()

    t_start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda"
    log(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")

    train_docs = read_docs(os.path.join(args.data, "train.txt"))
    valid_docs = read_docs(os.path.join(args.data, "valid.txt"))
    log(f"docs: train {len(train_docs)} valid {len(valid_docs)}")

    t = time.time()
    tok, tok_json, n_bpe = train_tokenizer(train_docs, args.vocab)
    eot_id, ims_id, ime_id = n_bpe, n_bpe + 1, n_bpe + 2
    vocab_size = n_bpe + 3
    log(f"tokenizer: {n_bpe} BPE + 3 special = {vocab_size} ({time.time() - t:.1f}s)")
    sample = valid_docs[0][:300]
    enc = tok.encode(sample, add_special_tokens=False)
    assert tok.decode(enc.ids) == sample, "tokenizer round trip failed"
    log(f"tokenize 'And God said': {tok.encode('And God said', add_special_tokens=False).ids}")

    dev_docs = [d for i, d in enumerate(train_docs) if i % 50 == 49]
    fit_docs = [d for i, d in enumerate(train_docs) if i % 50 != 49]
    fit = encode_docs(tok, fit_docs, eot_id)
    devs = encode_docs(tok, dev_docs, eot_id)
    valid = encode_docs(tok, valid_docs, eot_id)
    n_chars = sum(map(len, fit_docs))
    log(f"tokens: fit {len(fit)} ({n_chars / len(fit):.2f} chars/token), dev {len(devs)}, "
        f"valid {len(valid)}")

    # unigram baseline: add-one smoothed counts on the training tokens
    counts = np.bincount(fit, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    uni = float(-logp[valid[1:]].mean())
    log(f"unigram baseline on valid: loss {uni:.4f} ppl {math.exp(uni):.2f}")

    fit_t, dev_t, valid_t = (torch.from_numpy(a) for a in (fit, devs, valid))
    probe = make_model(args, vocab_size, eot_id, ime_id)
    n_params = sum(p.numel() for p in probe.parameters())
    n_emb = probe.model.embed_tokens.weight.numel()
    log(f"model: {n_params / 1e6:.2f}M params ({n_emb / 1e6:.2f}M embedding, tied), "
        f"layers {args.layers} hidden {args.hidden} heads {args.heads}/{args.kv_heads} "
        f"head_dim {args.head_dim} inter {args.inter}")
    del probe

    epochs_list = [int(e) for e in args.epochs.split(",")]
    deadline = time.time() + args.budget_s
    best = None
    for E in epochs_list:
        if time.time() > deadline:
            log(f"skipping {E} epochs: budget spent")
            continue
        log(f"run: {E} epochs, {args.batch}x{args.seq} = {args.batch * args.seq} tokens/step")
        model, d, ep, steps, secs = train_one(args, E, fit_t, dev_t, vocab_size,
                                               (eot_id, ime_id), dev, deadline)
        log(f"run {E} epochs: best dev {d:.4f} at epoch {ep}, {steps} steps, {secs:.1f}s")
        if best is None or d < best[0]:
            best = (d, model, E, ep, steps, secs)
        else:
            del model
        torch.cuda.empty_cache()
    d, model, E, ep, steps, secs = best
    log(f"kept: run of {E} epochs at epoch {ep} (dev {d:.4f})")

    vl = eval_loss(model, valid_t, args.seq, dev)
    log(f"VALID: loss {vl:.4f} ppl {math.exp(vl):.2f} | unigram loss {uni:.4f} "
        f"ppl {math.exp(uni):.2f} | {len(valid)} tokens, windows of {args.seq}")

    gen = torch.Generator().manual_seed(args.seed)
    for p in ["And God said", "The", "In the beginning", "A man", "Love is",
              "The computer"]:
        log(f"--- greedy  {p!r}: {generate(model, tok, p, 60, dev, True, stop=(eot_id,))!r}")
        log(f"--- sampled {p!r}: "
            f"{generate(model, tok, p, 60, dev, False, stop=(eot_id,), gen=gen)!r}")

    # save
    out = args.out
    os.makedirs(out, exist_ok=True)
    model = model.to(torch.bfloat16)
    try:
        model.config.torch_dtype = torch.bfloat16
    except Exception:  # noqa: BLE001
        pass
    model.save_pretrained(out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    cfg.setdefault("rope_theta", float((cfg.get("rope_parameters") or {}).get("rope_theta",
                                                                              10000.0)))
    cfg["torch_dtype"] = "bfloat16"
    cfg["tie_word_embeddings"] = True
    cfg["bos_token_id"] = None
    cfg["eos_token_id"] = eot_id
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    gcfg = {"bos_token_id": None, "eos_token_id": [eot_id, ime_id], "pad_token_id": eot_id,
            "do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
            "repetition_penalty": 1.1}
    json.dump(gcfg, open(os.path.join(out, "generation_config.json"), "w"), indent=2)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_json)
    json.dump(tokenizer_config(args.qwen_tokenizer_config, n_bpe),
              open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8"),
              indent=2, ensure_ascii=False)
    log(f"saved to {out}: {sorted(os.listdir(out))}")

    # reload check (non-fatal)
    try:
        from transformers import AutoModelForCausalLM
        m2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to(dev).eval()
        x = valid_t[:257][None].to(dev)
        with torch.no_grad():
            a = model.eval()(input_ids=x).logits.float()
            b = m2(input_ids=x).logits.float()
        log(f"reload check: max |dlogit| {float((a - b).abs().max()):.3e}")
        m2 = m2.float()
        vl32 = eval_loss(m2, valid_t, args.seq, dev)
        log(f"reloaded bf16 weights, VALID loss {vl32:.4f} ppl {math.exp(vl32):.2f}")
    except Exception as e:  # noqa: BLE001
        log(f"reload check failed: {type(e).__name__}: {e}")
    try:
        from transformers import AutoTokenizer
        at = AutoTokenizer.from_pretrained(out)
        log(f"AutoTokenizer: {type(at).__name__} 'And God said' -> "
            f"{at('And God said')['input_ids']} eos {at.eos_token!r}")
    except Exception as e:  # noqa: BLE001
        log(f"AutoTokenizer check failed: {type(e).__name__}: {e}")
    log(f"total {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
