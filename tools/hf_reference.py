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
# keys. GGUF models (a .gguf file, a folder holding one and no config.json,
# gguf-split's NAME-0000k-of-0000N.gguf) are read here, their blocks (Q8_0,
# Q4_0, Q4_K, Q5_K, Q6_K) dequantized in float32 from the layouts llama.cpp's
# ggml-common.h documents, and loaded the same way from a config made of
# their qwen3.* metadata. Everything runs in float32 with eager attention
# and TF32 off.
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


# ---------------------------------------------------------------------------
# GGUF: header (magic, version, tensor count, metadata count), metadata
# pairs, tensor infos (name, dims, ne[] with ne[0] the row length, ggml
# type, offset), padding to general.alignment, data. Little-endian.

_GGUF_FIXED = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
               10: "<u8", 11: "<i8", 12: "<f8"}
# ggml type -> (elements, bytes) of one block
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 8: (32, 34), 12: (256, 144),
                13: (256, 176), 14: (256, 210)}


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take("<Q")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            if et == 8:
                return [self.string() for _ in range(n)]
            dt = np.dtype(_GGUF_FIXED[et])
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos)
            self.pos += n * dt.itemsize
            return arr.tolist()
        dt = np.dtype(_GGUF_FIXED[t])
        v = np.frombuffer(self.buf, dtype=dt, count=1, offset=self.pos)[0]
        self.pos += dt.itemsize
        return bool(v) if t == 7 else v.item()


def read_gguf(path):
    """Returns (metadata dict, {name: (ggml type, ne list, uint8 array of its bytes)})."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("%s: not a GGUF file" % path)
    c.pos = 4
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    if version not in (2, 3):
        raise ValueError("%s: GGUF version %d" % (path, version))
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        ne = [c.take("<Q") for _ in range(c.take("<I"))]
        infos.append((name, ne, c.take("<I"), c.take("<Q")))
    align = meta.get("general.alignment", 32)
    data = (c.pos + align - 1) // align * align
    tensors = {}
    for name, ne, t, off in infos:
        if t not in _GGML_BLOCKS:
            raise ValueError("%s: tensor %s has ggml type %d" % (path, name, t))
        elems, nbytes = _GGML_BLOCKS[t]
        n = int(np.prod(ne, dtype=np.int64)) // elems * nbytes
        tensors[name] = (t, ne, buf[data + off:data + off + n])
    return meta, tensors


def _f16(b):
    """[n, 2] uint8 -> [n, 1] float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _scale_min_k4(scales):
    """Q4_K / Q5_K: scales[n, 12] -> (sc, m), each [n, 8] float32 (6-bit pairs)."""
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    m = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    m[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), m.astype(np.float32)


def ggml_dequantize(t, raw, ne):
    """The float32 values of a GGUF tensor, shaped [ne[n-1], ..., ne[0]] (PyTorch order).
    Each block's formula is the layout's (ggml-common.h), computed in float32."""
    shape = tuple(reversed(ne))
    if t == 0:
        return np.asarray(raw).view("<f4").reshape(shape).astype(np.float32)
    if t == 1:
        return np.asarray(raw).view("<f2").reshape(shape).astype(np.float32)
    if t == 30:
        return (np.asarray(raw).view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    elems, nbytes = _GGML_BLOCKS[t]
    b = np.asarray(raw).reshape(-1, nbytes)
    if t == 8:  # Q8_0: d f16, 32 int8; w = q * d
        y = b[:, 2:34].view(np.int8).astype(np.float32) * _f16(b[:, 0:2])
    elif t == 2:  # Q4_0: d f16, 16 bytes; element j low nibble, j + 16 high; w = (q - 8) * d
        q = b[:, 2:18]
        y = np.concatenate([(q & 0xF).astype(np.float32) - 8, (q >> 4).astype(np.float32) - 8],
                           axis=1) * _f16(b[:, 0:2])
    elif t in (12, 13):  # Q4_K / Q5_K: d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc, m = _scale_min_k4(b[:, 4:16])
        qs = b[:, 16:144] if t == 12 else b[:, 48:176]
        qh = b[:, 16:48] if t == 13 else None
        y = np.empty((b.shape[0], 256), np.float32)
        for c in range(4):  # 64 elements: sub-blocks 2c (low nibbles) and 2c + 1 (high)
            q = qs[:, 32 * c:32 * c + 32]
            lo, hi = (q & 0xF).astype(np.float32), (q >> 4).astype(np.float32)
            if qh is not None:
                lo += np.where(qh & (1 << (2 * c)), 16, 0).astype(np.float32)
                hi += np.where(qh & (2 << (2 * c)), 16, 0).astype(np.float32)
            for k, v in ((2 * c, lo), (2 * c + 1, hi)):
                d1 = (d[:, 0] * sc[:, k])[:, None]
                m1 = (dmin[:, 0] * m[:, k])[:, None]
                y[:, 32 * k:32 * k + 32] = d1 * v - m1
    elif t == 14:  # Q6_K: ql[128], qh[64], int8 scales[16], d f16; w = d * sc * (q - 32)
        ql, qh = b[:, 0:128], b[:, 128:192]
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b[:, 208:210])
        y = np.empty((b.shape[0], 256), np.float32)
        for h in range(2):  # halves of 128 elements
            lq, hq, s = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32], sc[:, 8 * h:8 * h + 8]
            parts = [(lq[:, 0:32] & 0xF) | (((hq >> 0) & 3) << 4),
                     (lq[:, 32:64] & 0xF) | (((hq >> 2) & 3) << 4),
                     (lq[:, 0:32] >> 4) | (((hq >> 4) & 3) << 4),
                     (lq[:, 32:64] >> 4) | (((hq >> 6) & 3) << 4)]
            for u, q in enumerate(parts):  # element 128h + 32u + l, scale 16ths: 2u + l // 16
                qf = q.astype(np.float32) - 32
                for half in range(2):
                    ds = (d[:, 0] * s[:, 2 * u + half])[:, None]
                    lo = 32 * u + 16 * half
                    y[:, 128 * h + lo:128 * h + lo + 16] = ds * qf[:, 16 * half:16 * half + 16]
    else:
        raise ValueError("ggml type %d" % t)
    return y.reshape(shape)


_GGUF_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                     "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                     "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                     "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                     "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                   "output": "lm_head"}


def gguf_hf_name(name):
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _GGUF_BLOCK_NAMES:
        return "model.layers.%s.%s.%s" % (parts[1], _GGUF_BLOCK_NAMES[parts[2]], suffix)
    if stem in _GGUF_TOP_NAMES:
        return "%s.%s" % (_GGUF_TOP_NAMES[stem], suffix)
    raise ValueError("GGUF tensor %s has no HF name here" % name)


def gguf_paths(model):
    """The files of a GGUF model path (file or folder, split or not), the first first."""
    if os.path.isdir(model):
        files = sorted(f for f in os.listdir(model) if f.endswith(".gguf") and not f.startswith("mmproj"))
        if not files:
            return []
        model = os.path.join(model, files[0])
    base = os.path.basename(model)
    import re
    m = re.match(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", base)
    if not m:
        return [model]
    n = int(m.group(3))
    return [os.path.join(os.path.dirname(model), "%s-%05d-of-%05d.gguf" % (m.group(1), i, n))
            for i in range(1, n + 1)]


def is_gguf(model):
    if os.path.isfile(model):
        return True
    return not os.path.exists(os.path.join(model, "config.json")) and bool(gguf_paths(model))


def load_gguf(model):
    """(Qwen3 config dict, float32 state dict) of a GGUF model."""
    paths = gguf_paths(model)
    meta, tensors = read_gguf(paths[0])
    for p in paths[1:]:
        tensors.update(read_gguf(p)[1])
    if meta.get("general.architecture") != "qwen3":
        raise ValueError("%s: architecture %r" % (model, meta.get("general.architecture")))
    a = "qwen3."
    hidden, heads = meta[a + "embedding_length"], meta[a + "attention.head_count"]
    eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
           "vocab_size": tensors["token_embd.weight"][1][1], "hidden_size": hidden,
           "intermediate_size": meta[a + "feed_forward_length"],
           "num_hidden_layers": meta[a + "block_count"], "num_attention_heads": heads,
           "num_key_value_heads": meta.get(a + "attention.head_count_kv", heads),
           "head_dim": meta.get(a + "attention.key_length", hidden // heads),
           "max_position_embeddings": meta[a + "context_length"],
           "rms_norm_eps": meta[a + "attention.layer_norm_rms_epsilon"],
           "rope_theta": meta.get(a + "rope.freq_base", 10000.0), "attention_bias": False,
           "hidden_act": "silu", "tie_word_embeddings": "output.weight" not in tensors,
           "eos_token_id": eos, "torch_dtype": "float32"}
    sd = {gguf_hf_name(n): np.ascontiguousarray(ggml_dequantize(t, raw, ne), dtype=np.float32)
          for n, (t, ne, raw) in tensors.items()}
    return cfg, sd


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

    t0 = time.time()
    gguf_sd = None
    if is_gguf(model_dir):
        cfg, gguf_sd = load_gguf(model_dir)
        quant = {"gguf": True}
    else:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        quant = cfg.get("quantization") or cfg.get("quantization_config")
    if quant is None:
        model = Qwen3ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    else:
        if gguf_sd is None:
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
        if gguf_sd is None:
            gguf_sd = load_mlx_state_dict(model_dir, bits, group_size)
        sd = {k: torch.from_numpy(v) for k, v in gguf_sd.items()}
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
    kind = "HF" if quant is None else "GGUF" if "gguf" in quant else "MLX %d-bit" % quant["bits"]
    log("loaded %s (%s) in %.1f s on %s" % (model_dir, kind, time.time() - t0, device))
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
    if is_gguf(model_dir):
        return set(load_gguf_meta_eos(model_dir))
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


def load_gguf_meta_eos(model_dir):
    meta = read_gguf(gguf_paths(model_dir)[0])[0]
    return [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
            if k in meta]


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
