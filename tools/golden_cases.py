#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# golden_cases.py -- the engine's golden test cases, in one place.
#   python3 tools/golden_cases.py write-cases   -> tests/golden/engine/cases.json
#   python3 tools/golden_cases.py prepare BUILD_DIR OUT_DIR
#        generates each case's model with BUILD_DIR/lp_genmodel into OUT_DIR/models
#        and writes OUT_DIR/jobs.json for tools/hf_reference.py (run on the GPU
#        machine; its outputs go to tests/golden/engine/).
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
# Same weights as tiny2_bf16 in other containers: they share its reference.
ALIASES = {
    "tiny2_f32": ("--seed 101 --format hf-f32 --tied 1 " + TINY, "tiny2_bf16"),
    "tiny2_bf16_sharded": ("--seed 101 --format hf-bf16 --tied 1 --sharded 3 " + TINY,
                           "tiny2_bf16"),
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
    for name in ("tiny2_bf16", "narrow28_bf16", "narrow28_mlx8"):
        vocab = 256 if name.startswith("narrow") else 512
        c.append({"case": name + "_long", "model": name, "tokens": lcg_tokens(9, 320, vocab),
                  "greedy": 32})
    return c


def write_cases():
    doc = {
        "comment": "Golden cases: models made by lp_genmodel from 'gen' args; reference logits "
                   "and greedy ids from tools/hf_reference.py (HF transformers, float32). "
                   "Regenerate with tools/golden_cases.py.",
        "models": {k: {"gen": v} for k, v in MODELS.items()},
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


def prepare(build, out):
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    for name, args in MODELS.items():
        d = os.path.join(out, "models", name)
        if not os.path.exists(os.path.join(d, "config.json")):
            subprocess.check_call([os.path.join(build, "lp_genmodel"), "--out", d] + args.split())
    # record what the references are computed on: the test checks that
    # lp_genmodel still writes these exact bytes.
    with open(CASES) as f:
        doc = json.load(f)
    for name in MODELS:
        doc["models"][name]["fnv1a64"] = fnv1a64(os.path.join(out, "models", name,
                                                              "model.safetensors"))
    with open(CASES, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    jobs = []
    for c in cases():
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
    elif len(sys.argv) == 4 and sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    else:
        print(__doc__ if False else "usage: golden_cases.py write-cases | prepare BUILD OUT_DIR")
        sys.exit(2)
