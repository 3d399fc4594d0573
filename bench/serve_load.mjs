// SPDX-License-Identifier: MIT
// serve_load.mjs -- a load generator for `layerpipe serve`, through the
// official openai Node SDK: for each concurrency N, N streaming chat
// completions at once (max_tokens each, ignore_eos so every stream runs to
// its length), then aggregate generated tok/s, time to first token and
// inter-token latency (p50, p99) from the client's clock, and each stage's
// busy share over the run from /metrics (layerpipe_stage_busy_ratio is
// cumulative: the share is the busy-seconds delta over the wall time).
// Usage: LP_NODE_MODULES=DIR/node_modules node bench/serve_load.mjs BASE_URL "1,2,4,8" MAX_TOKENS [ROUNDS]
import { createRequire } from "node:module";

const require = createRequire(process.env.LP_NODE_MODULES + "/");
const mod = require("openai");
const OpenAI = mod.OpenAI ?? mod.default ?? mod;

const [base, levels = "1,2,4,8,16,32", maxTokensArg = "64", roundsArg = "1"] =
  process.argv.slice(2);
const maxTokens = Number(maxTokensArg), rounds = Number(roundsArg);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.LP_API_KEY || "none" });

const prompts = ["And it came to pass", "In the beginning", "Blessed are the meek",
  "A fool and his money", "The LORD is my shepherd", "Then said Jesus unto them"];

function q(xs, p) {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.round(p * (s.length - 1)))];
}

// busy seconds per stage: ratio * uptime is not exported, so read the
// counters of tokens and the busy ratio together with a wall clock
async function stageBusy() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^layerpipe_stage_busy_seconds_total\{stage="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)/);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

async function oneStream(i, ttft, itl) {
  const t0 = performance.now();
  let last = 0, n = 0;
  const stream = await client.chat.completions.create({
    model: process.env.LP_MODEL_NAME || "layerpipe",
    messages: [{ role: "user", content: prompts[i % prompts.length] }],
    max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true }, ignore_eos: true,
  });
  let usage = 0;
  for await (const chunk of stream) {
    const now = performance.now();
    if (chunk.usage) usage = chunk.usage.completion_tokens;
    const d = chunk.choices?.[0]?.delta;
    if (!d || !(d.content || d.reasoning_content)) continue;
    if (n === 0) ttft.push((now - t0) / 1e3);
    else itl.push((now - last) / 1e3);
    last = now;
    n++;
  }
  return usage || n;
}

const results = [];
for (const level of levels.split(",").map(Number)) {
  const ttft = [], itl = [];
  let tokens = 0;
  const b0 = await stageBusy(), w0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    const counts = await Promise.all(Array.from({ length: level }, (_, i) => oneStream(i, ttft, itl)));
    tokens += counts.reduce((a, b) => a + b, 0);
  }
  const wall = (performance.now() - w0) / 1e3, b1 = await stageBusy();
  const busy = {};
  for (const k of Object.keys(b1)) busy[k] = +(100 * (b1[k] - (b0[k] || 0)) / wall).toFixed(1);
  const row = { streams: level, tokens, wall_s: +wall.toFixed(2), tok_s: +(tokens / wall).toFixed(2),
    ttft_p50_s: +q(ttft, 0.5).toFixed(3), ttft_p99_s: +q(ttft, 0.99).toFixed(3),
    itl_p50_ms: +(1e3 * q(itl, 0.5)).toFixed(1), itl_p99_ms: +(1e3 * q(itl, 0.99)).toFixed(1),
    busy_pct: busy };
  results.push(row);
  console.log(JSON.stringify(row));
}
