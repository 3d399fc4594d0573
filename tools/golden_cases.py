#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# golden_cases.py -- the engine's golden test cases, in one place.
#   python3 tools/golden_cases.py write-cases   -> tests/golden/engine/cases.json
#   python3 tools/golden_cases.py prepare BUILD_DIR OUT_DIR [PREFIX]
#        generates each case's model with BUILD_DIR/lp_genmodel into OUT_DIR/models
#        and writes OUT_DIR/jobs.json for tools/hf_reference.py (run on the GPU
#        machine; its outputs go to tests/golden/engine/); with PREFIX, only
#        the models whose names start with it (the others keep their references).
# Plain python3, no third-party modules.
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(ROOT, "tests", "golden", "engine", "cases.json")

TINY = "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 --vocab 512"
# 28 layers like Qwen3-1.7B, narrow; q width (4 x 32) differs from hidden (64)
NARROW = "--layers 28 --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --intermediate 128 --vocab 256"

MODELS = {
    "tiny2_bf16": "--seed 101 --format hf-bf16 --tied 1 " + TINY,
    "tiny2_mlx8": "--seed 102 --format mlx8 --group 64 --tied 0 " + TINY,
    "tiny2_mlx4": "--seed 103 --format mlx4 --group 32 --tied 1 " + TINY,
    "tiny2_mlx8_g128": "--seed 104 --format mlx8 --group 128 --tied 1 " + TINY.replace(
        "--hidden 64", "--hidden 128"),
    "narrow28_bf16": "--seed 201 --format hf-bf16 --tied 1 " + NARROW,
    "narrow28_mlx8": "--seed 202 --format mlx8 --group 64 --tied 1 " + NARROW,
}
# GGUF blocks, as llama.cpp quantizes (lp_genmodel: the seed's bf16 values
# quantized by lp_ggml_quantize_row; the references dequantize the file's
# blocks). K-quant rows are 256 elements, so those models are wider.
WIDE = "--layers 2 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 512 --vocab 512"
WIDE8 = WIDE.replace("--layers 2", "--layers 8")
GGUF_MODELS = {
    "gguf_q8_0": "--seed 401 --format gguf-q8_0 --tied 1 " + TINY,
    "gguf_q4_0": "--seed 402 --format gguf-q4_0 --tied 0 " + TINY,
    "gguf_q4_k": "--seed 403 --format gguf-q4_k --tied 1 " + WIDE,
    "gguf_q5_k": "--seed 404 --format gguf-q5_k --tied 0 " + WIDE,
    "gguf_q6_k": "--seed 405 --format gguf-q6_k --tied 1 " + WIDE,
    "gguf8_q4_k_m": "--seed 406 --format gguf-q4_k_m --tied 1 " + WIDE8,
    "gguf8_q5_k_m": "--seed 407 --format gguf-q5_k_m --tied 0 --sharded 2 " + WIDE8,
}
MODELS.update(GGUF_MODELS)
# Same weights as tiny2_bf16 in other containers: they share its reference
# (gguf-f16: their f16 rounding, exact but for values below 2^-17).
ALIASES = {
    "tiny2_f32": ("--seed 101 --format hf-f32 --tied 1 " + TINY, "tiny2_bf16"),
    "tiny2_bf16_sharded": ("--seed 101 --format hf-bf16 --tied 1 --sharded 3 " + TINY,
                           "tiny2_bf16"),
    "tiny2_gguf_f32": ("--seed 101 --format gguf-f32 --tied 1 " + TINY, "tiny2_bf16"),
    "tiny2_gguf_bf16_split": ("--seed 101 --format gguf-bf16 --tied 1 --sharded 2 " + TINY,
                              "tiny2_bf16"),
    "tiny2_gguf_f16": ("--seed 101 --format gguf-f16 --tied 1 " + TINY, "tiny2_bf16"),
}


def lcg_tokens(seed, n, vocab):
    x = seed
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) % vocab)
    return out


def cases():
    c = []
    for name in MODELS:
        vocab = 256 if name.startswith("narrow") else 512
        c.append({"case": name + "_short", "model": name, "tokens": lcg_tokens(7, 12, vocab),
                  "greedy": 32})
    for name in ("tiny2_bf16", "narrow28_bf16", "narrow28_mlx8", "gguf8_q4_k_m"):
        vocab = 256 if name.startswith("narrow") else 512
        c.append({"case": name + "_long", "model": name, "tokens": lcg_tokens(9, 320, vocab),
                  "greedy": 32})
    return c


def write_cases():
    old = {}
    if os.path.exists(CASES):  # keep the hashes of models whose arguments did not change
        with open(CASES) as f:
            old = json.load(f).get("models", {})
    models = {}
    for k, v in MODELS.items():
        models[k] = {"gen": v}
        if old.get(k, {}).get("gen") == v and "fnv1a64" in old[k]:
            models[k]["fnv1a64"] = old[k]["fnv1a64"]
    doc = {
        "comment": "Golden cases: models made by lp_genmodel from 'gen' args; reference logits "
                   "and greedy ids from tools/hf_reference.py (HF transformers, float32). "
                   "Regenerate with tools/golden_cases.py.",
        "models": models,
        "aliases": {k: {"gen": v[0], "same_weights_as": v[1]} for k, v in ALIASES.items()},
        "cases": cases(),
    }
    with open(CASES, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", CASES)


def fnv1a64(path):
    h = 0xcbf29ce484222325
    with open(path, "rb") as f:
        data = f.read()
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def model_file(d):
    """The file the references are computed on: model.safetensors, model.gguf or the first split."""
    for f in ("model.safetensors", "model.gguf", "model-00001-of-00002.gguf"):
        if os.path.exists(os.path.join(d, f)):
            return os.path.join(d, f)
    raise FileNotFoundError(d + ": no model file")


def prepare(build, out, prefix=""):
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    chosen = [n for n in MODELS if n.startswith(prefix)]
    for name in chosen:
        d = os.path.join(out, "models", name)
        if not os.path.exists(d):
            subprocess.check_call([os.path.join(build, "lp_genmodel"), "--out", d] +
                                  MODELS[name].split())
    # record what the references are computed on: the test checks that
    # lp_genmodel still writes these exact bytes.
    with open(CASES) as f:
        doc = json.load(f)
    for name in chosen:
        doc["models"].setdefault(name, {"gen": MODELS[name]})
        doc["models"][name]["fnv1a64"] = fnv1a64(model_file(os.path.join(out, "models", name)))
    with open(CASES, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    jobs = []
    for c in cases():
        if c["model"] not in chosen:
            continue
        jobs.append({"model": "models/" + c["model"], "tokens": c["tokens"],
                     "out_logits": "out/" + c["case"] + ".logits.f32", "greedy": c["greedy"],
                     "out_ids": "out/" + c["case"] + ".greedy.txt"})
    os.makedirs(os.path.join(out, "out"), exist_ok=True)
    with open(os.path.join(out, "jobs.json"), "w") as f:
        json.dump(jobs, f, indent=1)
    print("prepared", len(jobs), "jobs in", out)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "write-cases":
        write_cases()
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else "")
    else:
        print(__doc__ if False else "usage: golden_cases.py write-cases | prepare BUILD OUT_DIR")
        sys.exit(2)
