#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# hf_reference.py -- the PyTorch/transformers oracle for layerpipe's golden
# tests: given a Qwen3 model folder (HF safetensors, or MLX affine-quantized
# as written by mlx_lm or tools/lp_genmodel) and token ids, writes the float32
# logits of every position and a greedy continuation with the top-2 logit
# margin of each step (so tests can tolerate near-ties).
# MLX folders are dequantized here in float32 (w = scale * q + bias, codes
# packed little-endian in uint32, element 0 in the lowest bits) and loaded
# into a Qwen3ForCausalLM built from config.json without its quantization
# keys. Everything runs in float32 with eager attention and TF32 off.
#
# Needs: python3 with torch, transformers (Qwen3: >= 4.51) and numpy; no network.
#
# Single job:
#   python3 tools/hf_reference.py --model DIR --tokens "1 2 3" \
#       --out-logits FILE.f32 [--greedy N --out-ids FILE.txt] [--device cpu|cuda|auto]
# Batch (models are loaded once per folder):
#   python3 tools/hf_reference.py --jobs jobs.json [--device ...]
#   jobs.json: [{"model": DIR, "tokens": [1, 2, 3] or "1 2 3",
#                "out_logits": FILE.f32, "greedy": N, "out_ids": FILE.txt}, ...]
#   (relative paths in jobs.json are relative to the jobs file's folder)
#
# Outputs:
#   FILE.f32: little-endian float32 [n_tokens][vocab], logits of each prompt position.
#   FILE.txt: line 1: the N greedy ids, space-separated (decoding does not stop
#             at EOS unless --stop-at-eos); line 2: for each step, top1 - top2 of
#             the logits the id was chosen from ("%.6g", space-separated).
import argparse
import json
import os
import struct
import sys
import time

import numpy as np


def log(msg):
    print("hf_reference: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# safetensors, read with numpy (numpy has no bfloat16: BF16 is widened to
# float32 bit-exactly; U32 stays uint32 for the MLX codes).

_NP_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}


def read_safetensors(path):
    """Returns {name: (dtype_string, numpy array)}; BF16 comes back as float32."""
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.asarray(data[b:e]).view(_NP_DTYPES[dt]).reshape(shape)
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif dt in ("F16", "F64"):
            arr = arr.astype(np.float32)
        out[name] = (dt, arr)
    return out


def model_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(os.path.join(model_dir, v) for v in weight_map.values()))
    return [os.path.join(model_dir, "model.safetensors")]


def mlx_dequantize(q, scales, biases, bits, group_size):
    """q uint32 [out, in*bits/32], scales/biases float32 [out, in/group] -> float32 [out, in]."""
    rows = q.shape[0]
    per_word = 32 // bits
    cols = q.shape[1] * per_word
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    codes = ((q[:, :, None] >> shifts[None, None, :]) & mask).reshape(rows, cols)
    codes = codes.astype(np.float32).reshape(rows, cols // group_size, group_size)
    # Two float32 roundings, multiply then add (no fused multiply-add), like the C reference.
    w = codes * scales[:, :, None].astype(np.float32)
    w = w + biases[:, :, None].astype(np.float32)
    return w.reshape(rows, cols).astype(np.float32)


def load_mlx_state_dict(model_dir, bits, group_size):
    tensors = {}
    for path in model_files(model_dir):
        tensors.update(read_safetensors(path))
    sd = {}
    for name, (dt, arr) in tensors.items():
        if name.endswith(".scales") or name.endswith(".biases"):
            continue
        if dt == "U32" and name.endswith(".weight"):
            base = name[: -len(".weight")]
            if base + ".scales" not in tensors or base + ".biases" not in tensors:
                raise ValueError("%s: U32 weight without scales/biases" % name)
            w = mlx_dequantize(arr, tensors[base + ".scales"][1], tensors[base + ".biases"][1],
                               bits, group_size)
        else:
            w = np.ascontiguousarray(arr, dtype=np.float32)
        sd[name] = w
    return sd


# ---------------------------------------------------------------------------
# The model.

def setup_torch(device):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.set_grad_enabled(False)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch, torch.device(device)


def load_model(model_dir, torch, device):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    quant = cfg.get("quantization") or cfg.get("quantization_config")
    t0 = time.time()
    if quant is None:
        model = Qwen3ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    else:
        bits, group_size = int(quant["bits"]), int(quant["group_size"])
        if quant.get("mode", "affine") != "affine":
            raise ValueError("%s: quantization mode %r is not affine" % (model_dir, quant["mode"]))
        cfg = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")}
        cfg["torch_dtype"] = "float32"
        config = Qwen3Config.from_dict(cfg)
        try:
            model = Qwen3ForCausalLM._from_config(config, attn_implementation="eager",
                                                  torch_dtype=torch.float32)
        except TypeError:
            config._attn_implementation = "eager"
            model = Qwen3ForCausalLM(config)
        sd = {k: torch.from_numpy(v) for k, v in load_mlx_state_dict(model_dir, bits, group_size).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
        missing = [k for k in missing if k not in allowed_missing and "rotary_emb" not in k]
        if missing or unexpected:
            raise ValueError("%s: missing %s, unexpected %s" % (model_dir, missing[:8], unexpected[:8]))
        if config.tie_word_embeddings:
            model.tie_weights()
    model = model.to(device=device, dtype=torch.float32).eval()
    impl = getattr(model.config, "_attn_implementation", "?")
    if impl != "eager":
        log("warning: attention implementation is %r, not eager" % impl)
    # The loaded weights must be float32 and finite.
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise ValueError("%s: parameter %s is %s" % (model_dir, name, p.dtype))
    log("loaded %s (%s) in %.1f s on %s" % (model_dir, "MLX %d-bit" % quant["bits"] if quant else "HF",
                                            time.time() - t0, device))
    return model


def top2_margin(logits_row):
    top = logits_row.topk(2).values
    return float(top[0] - top[1])


def run_job(model, torch, device, tokens, out_logits, greedy, out_ids, eos_ids, stop_at_eos,
            use_cache):
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=use_cache)
    logits = out.logits[0].float()  # [n_tokens, vocab]
    if out_logits:
        logits.cpu().numpy().astype("<f4").tofile(out_logits)
    if not greedy:
        return
    gen, margins = [], []
    last = logits[-1]
    past = out.past_key_values if use_cache else None
    seq = list(tokens)
    for step in range(greedy):
        nxt = int(torch.argmax(last))
        gen.append(nxt)
        margins.append(top2_margin(last))
        seq.append(nxt)
        if stop_at_eos and nxt in eos_ids:
            break
        if step + 1 == greedy:
            break
        if use_cache:
            o = model(input_ids=torch.tensor([[nxt]], dtype=torch.long, device=device),
                      past_key_values=past, use_cache=True)
            past = o.past_key_values
        else:
            o = model(input_ids=torch.tensor([seq], dtype=torch.long, device=device), use_cache=False)
        last = o.logits[0, -1].float()
    with open(out_ids, "w") as f:
        f.write(" ".join(str(i) for i in gen) + "\n")
        f.write(" ".join("%.6g" % m for m in margins) + "\n")


def eos_of(model_dir):
    ids = set()
    for name in ("config.json", "generation_config.json"):
        p = os.path.join(model_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                e = json.load(f).get("eos_token_id")
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, list):
                ids.update(int(x) for x in e)
    return ids


def parse_tokens(t):
    if isinstance(t, str):
        return [int(x) for x in t.replace(",", " ").split()]
    return [int(x) for x in t]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", help='prompt ids, e.g. "1 2 3"')
    ap.add_argument("--out-logits")
    ap.add_argument("--greedy", type=int, default=0, help="greedy steps after the prompt")
    ap.add_argument("--out-ids")
    ap.add_argument("--jobs", help="JSON list of jobs (see the file header)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--stop-at-eos", action="store_true", help="end greedy decoding at an EOS id")
    ap.add_argument("--no-cache", action="store_true",
                    help="recompute the whole sequence each greedy step instead of using the KV cache")
    args = ap.parse_args()

    if args.jobs:
        base = os.path.dirname(os.path.abspath(args.jobs))
        with open(args.jobs) as f:
            jobs = json.load(f)

        def rel(p):
            return p if p is None or os.path.isabs(p) else os.path.join(base, p)

        jobs = [{"model": rel(j["model"]), "tokens": parse_tokens(j["tokens"]),
                 "out_logits": rel(j.get("out_logits")), "greedy": int(j.get("greedy", 0)),
                 "out_ids": rel(j.get("out_ids"))} for j in jobs]
    else:
        if not args.model or args.tokens is None:
            ap.error("--model and --tokens (or --jobs) are required")
        jobs = [{"model": args.model, "tokens": parse_tokens(args.tokens),
                 "out_logits": args.out_logits, "greedy": args.greedy, "out_ids": args.out_ids}]
    for j in jobs:
        if not j["tokens"]:
            ap.error("a job has no tokens")
        if j["greedy"] and not j["out_ids"]:
            ap.error("--greedy needs --out-ids")

    torch, device = setup_torch(args.device)
    models = {}
    for j in jobs:
        d = j["model"]
        if d not in models:
            models.clear()  # one model in memory at a time
            models[d] = load_model(d, torch, device)
        model = models[d]
        vocab = model.config.vocab_size
        if any(t < 0 or t >= vocab for t in j["tokens"]):
            raise ValueError("%s: token id outside [0, %d)" % (d, vocab))
        t0 = time.time()
        run_job(model, torch, device, j["tokens"], j["out_logits"], j["greedy"], j["out_ids"],
                eos_of(d), args.stop_at_eos, not args.no_cache)
        log("%s: %d tokens, %d greedy steps in %.1f s" % (d, len(j["tokens"]), j["greedy"], time.time() - t0))


if __name__ == "__main__":
    main()
