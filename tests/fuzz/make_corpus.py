#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# make_corpus.py -- writes the seed corpora of tests/fuzz/corpus/<harness>/
# from the bundled model and tests/golden: real files, small hand-made ones,
# truncated and mutated copies. Run from the repository root; the output is
# committed (rerunning rewrites the same files). The found-<sha1> files
# beside them are not made here: inputs the long runs found, minimized with
# `fuzz_<h> -merge=1 NEW tests/fuzz/corpus/<h> WORK` (bench/RESULTS.md), so
# that a short CI run starts from their coverage.
import json, os, random, struct

ROOT = os.getcwd()
MODEL = os.path.join(ROOT, "models/layerpipe-tiny-8bit")
OUT = os.path.join(ROOT, "tests/fuzz/corpus")
rng = random.Random(11)


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def mutate(b, n=4):
    b = bytearray(b)
    for _ in range(n):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def truncations(harness, stem, b, count=4):
    for k in range(1, count + 1):
        put(harness, "%s_trunc%d" % (stem, k), b[: len(b) * k // (count + 1)])


# ---- safetensors: whole images (length, header, data) ----
def st_image(tensors, meta=True, pad=0):
    hdr = {"__metadata__": {"format": "pt"}} if meta else {}
    data = b""
    for name, dtype, shape, size in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes(rng.randrange(256) for _ in range(size))
    h = json.dumps(hdr).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


small = st_image([("a", "F32", [2, 2], 16), ("b", "BF16", [3], 6), ("c", "U32", [1, 2], 8),
                  ("d", "I64", [0, 7], 0)])
put("safetensors", "small", small)
put("safetensors", "scalar", st_image([("s", "F16", [], 2), ("u8", "U8", [5], 5)], meta=False))
put("safetensors", "empty", st_image([]))
put("safetensors", "padded", st_image([("w", "F32", [1], 4)], pad=7))
real = read(os.path.join(MODEL, "model.safetensors"))
n_hdr = struct.unpack("<Q", real[:8])[0]
put("safetensors", "real_header_only", real[: 8 + n_hdr])  # offsets past the end: refused
truncations("safetensors", "small", small)
for k in range(4):
    put("safetensors", "small_mut%d" % k, mutate(small))
put("safetensors", "overlap", small.replace(b"[16, 22]", b"[10, 16]"))
put("safetensors", "huge_len", struct.pack("<Q", 1 << 62) + small[8:])

# ---- config: config.json NUL generation_config.json ----
cfg = read(os.path.join(MODEL, "config.json"))
gen = read(os.path.join(MODEL, "generation_config.json"))
put("config", "model", cfg + b"\0" + gen)
put("config", "config_only", cfg)
put("config", "gen_only", b"\0" + gen)
c = json.loads(cfg)
c2 = dict(c, eos_token_id=[8192, 8194], tie_word_embeddings=False)
c2.pop("quantization"); c2.pop("quantization_config")
put("config", "bf16_list_eos", json.dumps(c2).encode() + b"\0" + b'{"eos_token_id": 8193}')
c3 = dict(c, rope_parameters={"rope_type": "yarn", "factor": 4.0})
put("config", "yarn", json.dumps(c3).encode() + b"\0{}")
put("config", "gen_types", b'{}\0{"temperature": "hot", "top_k": -1, "eos_token_id": [1, "x"]}')
truncations("config", "model", cfg + b"\0" + gen)
for k in range(3):
    put("config", "model_mut%d" % k, mutate(cfg + b"\0" + gen))

# ---- tokenizer: tokenizer.json NUL tokenizer_config.json ----
real_tok = json.loads(read(os.path.join(MODEL, "tokenizer.json")))
tok_cfg = json.loads(read(os.path.join(MODEL, "tokenizer_config.json")))
small_cfg = {k: v for k, v in tok_cfg.items() if k not in ("chat_template", "added_tokens_decoder")}


def small_tok(n_vocab, array_merges=False, nfc=True):
    vocab = {k: v for k, v in real_tok["model"]["vocab"].items() if v < n_vocab}
    merges = []
    for m in real_tok["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in vocab and b in vocab and a + b in vocab:
            merges.append([a, b] if array_merges else a + " " + b)
    t = dict(real_tok)
    t["model"] = dict(real_tok["model"], vocab=vocab, merges=merges)
    added = []
    for i, a in enumerate(real_tok["added_tokens"]):
        added.append(dict(a, id=n_vocab + i))
    t["added_tokens"] = added
    if not nfc:
        t["normalizer"] = None
    return json.dumps(t, ensure_ascii=False).encode()


t300 = small_tok(300)
put("tokenizer", "tok300_cfg", t300 + b"\0" + json.dumps(small_cfg).encode())
put("tokenizer", "tok300", t300)
put("tokenizer", "tok260_array_merges_nonfc", small_tok(260, True, False))
cfg_tokens = dict(small_cfg, eos_token={"content": "<|im_end|>"}, pad_token=None, bos_token=7)
put("tokenizer", "tok300_cfg_objects", t300 + b"\0" + json.dumps(cfg_tokens).encode())
truncations("tokenizer", "tok300", t300, 3)
for k in range(3):
    put("tokenizer", "tok300_mut%d" % k, mutate(t300, 8))

# ---- encode: text ----
lines = [json.loads(l)["text"] for l in open(os.path.join(ROOT, "tests/golden/tokenizer/corpus.jsonl"))]
picked = lines[:: max(1, len(lines) // 12)][:12]
for i, t in enumerate(picked):
    put("encode", "corpus%02d" % i, t.encode()[:2000])
put("encode", "specials", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|endoftext|>")
put("encode", "invalid_utf8", b"ab\xc3(\xff\xfe caf\xc3\xa9 \xed\xa0\x80 \xf4\x90\x80\x80")
put("encode", "nfc", "e\u0301 A\u030a \u212b \ufb01 \u00e9\U0001f600  \t\r\n\n 123456789 'll 'S")
put("encode", "nul", b"a\0b\0\0c")

# ---- chat: messages JSON ----
convs = json.loads(read(os.path.join(ROOT, "tests/golden/tokenizer/conversations.json")))
for i, cv in enumerate(convs[:16]):
    body = {"messages": cv["messages"]}
    if "tools" in cv:
        body["tools"] = cv["tools"]
    put("chat", "conv%02d" % i, json.dumps(body, ensure_ascii=False))
put("chat", "array", json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]))
put("chat", "tool_calls", json.dumps({"messages": [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nok",
     "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"city": "Oslo"}}},
                    {"function": {"name": "v", "arguments": "{\"a\": 1}"}}]},
    {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "rain"}],
    "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]}))
put("chat", "bad_fields", '{"messages": [{"role": 3, "content": [1]}, {"content": "x"}], "tools": "no"}')

# ---- wire: one selector byte, then a protobuf message (hand-encoded) ----
def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def f_varint(num, v):
    return varint(num << 3) + varint(v)


def f_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def f_fixed64(num, v):
    return varint(num << 3 | 1) + struct.pack("<Q", v)


def f_double(num, v):
    return varint(num << 3 | 1) + struct.pack("<d", v)


def segment(session, pos0, n_tokens, all_logits=False, no_logits=False):
    s = f_varint(1, session) + f_varint(2, pos0) + f_varint(3, n_tokens)
    if all_logits:
        s += f_varint(4, 1)
    if no_logits:
        s += f_varint(5, 1)
    return s


def activations(step, segs, dtype, n_rows, hidden=8):
    elem = 4 if dtype == 0 else 2
    m = f_varint(1, step)
    for s in segs:
        m += f_bytes(2, s)
    if dtype:
        m += f_varint(3, dtype)
    m += f_varint(4, n_rows) + f_varint(5, hidden)
    m += f_bytes(6, bytes(rng.randrange(256) for _ in range(n_rows * hidden * elem)))
    return m + f_double(7, 12.5) + f_fixed64(8, 0x1234)


# DType: F32 = 0, BF16 = 1, F16 = 2 (proto/layerpipe.proto)
put("wire", "stage_f32", b"\0" + activations(1, [segment(5, 0, 3)], 0, 3))
put("wire", "stage_bf16_two", b"\0" + activations(2, [segment(5, 3, 1), segment(6, 0, 4)], 1, 5))
put("wire", "stage_f16", b"\0" + activations(3, [segment(9, 0, 2)], 2, 2))
put("wire", "stage_bad_len", b"\0" + activations(4, [segment(5, 0, 3)], 0, 2))
put("wire", "sink_last_rows", b"\1" + activations(7, [segment(5, 0, 9, no_logits=True), segment(6, 0, 4)], 0, 1))
put("wire", "sink_all_logits", b"\1" + activations(8, [segment(5, 0, 3, all_logits=True)], 1, 3))
put("wire", "sink_empty", b"\1" + activations(9, [segment(5, 0, 2, no_logits=True)], 0, 0))
put("wire", "hello", b"\2" + f_varint(1, 2))
put("wire", "configure", b"\3" + f_fixed64(1, 0xDEADBEEF) + f_varint(2, 0) + f_varint(3, 5) +
    f_bytes(4, b"127.0.0.1:5002") + f_varint(5, 1) + f_varint(6, 8) + f_varint(7, 2048) +
    f_varint(8, 0) + f_varint(9, 1) + f_varint(10, 1) + f_varint(11, 512) + f_varint(12, 1) +
    f_varint(13, 2) + f_fixed64(14, 77))
put("wire", "configure_bad", b"\3" + f_fixed64(1, 0xDEADBEEF) + f_varint(2, 3) + f_varint(3, 11) +
    f_bytes(4, b"") + f_varint(6, 4096) + f_varint(7, 1 << 24) + f_varint(8, 0xFFFFFFFF) +
    f_varint(9, 7) + f_varint(10, 2) + f_varint(11, 65536) + f_varint(13, 1))
put("wire", "release", b"\4" + b"".join(f_varint(1, s) for s in (1, 2, 3, 1 << 63)))
put("wire", "release_packed", b"\4" + f_bytes(1, b"".join(varint(s) for s in range(1, 40))))
put("wire", "ack_fail", b"\5" + f_varint(1, 12) + f_varint(2, 0) + f_bytes(3, b"stage 2: busy") +
    f_double(4, 0.01) + f_varint(5, 10) + f_varint(6, 2))
put("wire", "stats", b"\6")
put("wire", "health", b"\7" + f_bytes(1, b"layerpipe.v1.Stage"))

# ---- openai: 'C' (chat) or 'P' (completions), then the request body ----
def body(kind, obj):
    return kind.encode() + json.dumps(obj, ensure_ascii=False).encode()


put("openai", "chat_min", body("C", {"messages": [{"role": "user", "content": "Hello!"}]}))
put("openai", "chat_full", body("C", {
    "model": "layerpipe-tiny-8bit", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "a color."}]},
        {"role": "assistant", "content": None, "reasoning_content": "hm",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "red", "tool_call_id": "c1"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "stream": True, "stream_options": {"include_usage": True},
    "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "seed": 42,
    "stop": ["\n\n", "END"], "logprobs": True, "top_logprobs": 3, "n": 1, "ignore_eos": False,
    "chat_template_kwargs": {"enable_thinking": False}, "response_format": {"type": "text"},
    "logit_bias": {}}))
put("openai", "chat_bad", body("C", {"messages": [{"role": "robot"}], "n": 2, "stop": [""],
                                     "temperature": "hot", "top_logprobs": 3}))
put("openai", "completion_text", body("P", {"prompt": "And it came to pass", "max_tokens": 8,
                                            "stop": "pass", "logprobs": 2, "echo": False}))
put("openai", "completion_ids", body("P", {"prompt": [[1, 2, 3, 8192]], "best_of": 1,
                                           "stream": False}))
put("openai", "completion_bad", body("P", {"prompt": [1, -1, 99999], "suffix": "x", "seed": 1.5}))
put("openai", "not_object", b"C[1, 2, 3]")
put("openai", "invalid_json", b'P{"prompt": "abc",')


# ---- stage: records [op][len lo][len hi][bytes] (tests/fuzz/fuzz_stage.c) ----
def rec(op, payload):
    return bytes([op]) + struct.pack("<H", len(payload)) + payload


def seg3(session, pos0, n_tokens, flags=0):
    return bytes([session | flags, pos0, n_tokens])


def fwd(stream, delta, flags, *segs):
    return rec(4 | stream << 3, bytes([delta & 0xFF, flags]) + b"".join(segs))


CONF = rec(2, bytes([0, 2, 4, 32, 0, 16, 0, 1]))  # layers [0, 2), 4 sessions, context 96
put("stage", "decode", CONF + fwd(0, 1, 0, seg3(1, 0, 5), seg3(2, 0, 3)) +
    fwd(0, 1, 0, seg3(1, 5, 1), seg3(2, 3, 1)) + rec(6, bytes([1])) +
    fwd(0, 1, 1, seg3(2, 4, 1), seg3(1, 0, 2)) + fwd(0, 1, 2, seg3(2, 5, 1, 8)))
put("stage", "rewind_and_faults", CONF + fwd(1, 3, 0, seg3(3, 0, 16)) +
    fwd(1, 1, 0, seg3(3, 8, 2)) + fwd(1, -1, 0, seg3(3, 10, 1)) + fwd(2, 1, 4, seg3(4, 0, 1)) +
    fwd(2, 1, 8, seg3(4, 0, 1)) + fwd(2, 1, 0, seg3(5, 3, 1)) + fwd(2, 2, 0, seg3(3, 99, 1)) +
    fwd(3, 1, 0, seg3(3, 10, 1), seg3(3, 11, 1)))
put("stage", "full", rec(2, bytes([1, 4, 2, 4, 2, 8, 4, 2])) +
    fwd(0, 1, 0, seg3(1, 0, 8)) + fwd(0, 1, 0, seg3(2, 0, 8)) + fwd(0, 1, 0, seg3(3, 0, 1)) +
    fwd(0, 1, 0, seg3(1, 8, 8)) + rec(6, bytes(range(8))) + fwd(0, 1, 0, seg3(3, 0, 1)))
put("stage", "reconfigure", CONF + fwd(0, 1, 0, seg3(1, 0, 4)) +
    rec(2, bytes([3, 2, 4, 32, 0, 16, 0, 1])) + fwd(0, 1, 0, seg3(1, 4, 1)) + CONF +
    fwd(0, 1, 0, seg3(1, 4, 1)) + fwd(0, 1, 0, seg3(1, 0, 1)))
WIRE_CONF = (f_varint(2, 1) + f_varint(3, 3) + f_bytes(4, b"127.0.0.1:5002") + f_varint(6, 2) +
             f_varint(7, 64) + f_varint(8, 0) + f_varint(10, 1) + f_varint(11, 8) +
             f_varint(12, 2))
put("stage", "wire", rec(1, WIRE_CONF) +
    rec(3, activations(1, [segment(7, 0, 3)], 0, 3, hidden=16)) +
    rec(3 | 1 << 3, activations(2, [segment(8, 0, 2), segment(7, 3, 1)], 1, 3, hidden=16)) +
    rec(5, f_bytes(1, b"".join(varint(s) for s in (7, 8, 9)))) +
    rec(0, f_fixed64(1, 0xDEADBEEF) + WIRE_CONF) + rec(5, f_varint(1, 1 << 63)))
put("stage", "unconfigured", fwd(0, 1, 0, seg3(1, 0, 1)) + rec(6, bytes([1, 2])) +
    rec(3, activations(1, [segment(1, 0, 1)], 0, 1, hidden=16)))


# ---- gguf: whole images (tests/fuzz/fuzz_gguf.c; layout in include/layerpipe/gguf.h) ----
def g_str(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


def g_kv(key, t, value):
    """A metadata pair; t: 'u32', 'i32', 'f32', 'bool', 'str', ('arr', elem, [values])."""
    head = g_str(key)
    if t == "str":
        return head + struct.pack("<I", 8) + g_str(value)
    if t == "u32":
        return head + struct.pack("<II", 4, value)
    if t == "i32":
        return head + struct.pack("<Ii", 5, value)
    if t == "f32":
        return head + struct.pack("<If", 6, value)
    if t == "bool":
        return head + struct.pack("<IB", 7, value)
    _, elem, values = t
    body = b"".join(g_str(v) for v in values) if elem == 8 else \
        struct.pack("<%d%s" % (len(values), {4: "I", 5: "i"}[elem]), *values)
    return head + struct.pack("<IIQ", 9, elem, len(values)) + body


def gguf_image(kvs, tensors, align=32):
    """tensors: (name, ggml type, ne list, data bytes), laid out as ggml lays them out."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    off, data = 0, b""
    for name, t, ne, blob in tensors:
        out += g_str(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        out += struct.pack("<IQ", t, off)
        data += blob + bytes(-len(blob) % align)
        off = len(data)
    return out + bytes(-len(out) % align) + data


VOCAB_KVS = [g_kv("general.architecture", "str", "qwen3"),
             g_kv("tokenizer.ggml.model", "str", "gpt2"), g_kv("tokenizer.ggml.pre", "str", "qwen2"),
             g_kv("tokenizer.ggml.tokens", ("arr", 8, ["H", "e", "l", "o", "He", "ll", "Hell",
                                                       "Hello", "\u0120", "<|im_end|>", "[PAD10]"]), None),
             g_kv("tokenizer.ggml.token_type", ("arr", 5, [1] * 9 + [3, 5]), None),
             g_kv("tokenizer.ggml.merges", ("arr", 8, ["H e", "l l", "He ll", "Hell o"]), None),
             g_kv("tokenizer.ggml.eos_token_id", "u32", 9), g_kv("tokenizer.ggml.add_bos_token", "bool", 0)]
put("gguf", "vocab", gguf_image(VOCAB_KVS, []))
small_gguf = gguf_image(VOCAB_KVS[:1] + [g_kv("qwen3.block_count", "u32", 1),
                                         g_kv("qwen3.attention.layer_norm_rms_epsilon", "f32", 1e-6)],
                        [("token_embd.weight", 8, [32, 2], bytes(range(68))),
                         ("output_norm.weight", 0, [4], struct.pack("<4f", 1, 2, 3, 4)),
                         ("blk.0.attn_q.weight", 30, [2, 3], bytes(12)),
                         ("blk.0.ffn_down.weight", 12, [256, 1], bytes(range(144))),
                         ("blk.0.ffn_up.weight", 14, [256, 1], bytes(210)),
                         ("blk.0.ffn_gate.weight", 13, [256, 1], bytes(176)),
                         ("blk.0.attn_v.weight", 2, [32, 1], bytes(18)),
                         ("blk.0.attn_k.weight", 1, [2, 2, 1, 1], bytes(8))])
put("gguf", "tensors", small_gguf)
put("gguf", "aligned_64", gguf_image([g_kv("general.alignment", "u32", 64)],
                                     [("a", 0, [3], bytes(12)), ("b", 0, [5], bytes(20))], align=64))
put("gguf", "empty", gguf_image([], []))
truncations("gguf", "tensors", small_gguf)
truncations("gguf", "vocab", gguf_image(VOCAB_KVS, []))
for k in range(6):
    put("gguf", "tensors_mut%d" % k, mutate(small_gguf))
    put("gguf", "vocab_mut%d" % k, mutate(gguf_image(VOCAB_KVS, [])))


# ---- hashcache: the tensor-hash cache file beside a weight file ----
HC = "layerpipe-tensor-hashes 1 210432 1764600000 123456789\n"
HC_ROWS = ("0123456789abcdef 64 8192 model.layers.0.mlp.up_proj.weight\n"
           "fedcba9876543210 8256 512 model.layers.0.mlp.up_proj.scales\n"
           "00000000000000ff 8768 512 model.layers.0.mlp.up_proj.biases\n")
put("hashcache", "three", HC + HC_ROWS)
put("hashcache", "header_only", HC)
put("hashcache", "duplicate", HC + HC_ROWS + HC_ROWS.splitlines(True)[0])
put("hashcache", "past_the_end", HC + "0123456789abcdef 210000 1000 x\n")
put("hashcache", "no_newline", HC + HC_ROWS[:-1])
put("hashcache", "other_file", HC.replace("210432", "210433") + HC_ROWS)
truncations("hashcache", "three", (HC + HC_ROWS).encode())
