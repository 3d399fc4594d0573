// SPDX-License-Identifier: MIT
// openai_client.mjs -- drives a running `layerpipe serve` with the official
// OpenAI Node SDK (npm `openai`), run by tests/api/test_serve.c. Every
// check compares two answers the server must agree on (streamed vs not,
// with and without logprobs, a stop string vs the text it cuts) or a
// documented shape. Environment: LP_NODE_MODULES (where `openai` is),
// LP_BASE_URL (http://127.0.0.1:PORT/v1), LP_API_KEY, LP_MODEL, and
// LP_MODE: "general" (the bundled model), "concurrent" (16 streams at once)
// or "scripted" (a model whose
// greedy output is "<think>Let</think>And<tool_call>{..}</tool_call>").
// Prints one line per failed check; exits 1 if any failed.
import { createRequire } from 'node:module';

const require = createRequire(process.env.LP_NODE_MODULES + '/');
const mod = require('openai');
const OpenAI = mod.OpenAI ?? mod.default ?? mod;

const base = process.env.LP_BASE_URL;
const key = process.env.LP_API_KEY;
const model = process.env.LP_MODEL;
const mode = process.env.LP_MODE ?? 'general';
let failures = 0;
let checks = 0;
function check(cond, what) {
  checks++;
  if (!cond) {
    failures++;
    console.error('FAIL: ' + what);
  }
}
const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0, timeout: 60000 });

async function metric(name) {
  const res = await fetch(base.replace(/\/v1$/, '') + '/metrics');
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

async function expectError(params, status, param, what, c = client) {
  try {
    await c.chat.completions.create(params);
    check(false, what + ': no error');
  } catch (e) {
    check(e instanceof OpenAI.APIError && e.status === status,
          `${what}: status ${e.status} (${e.message}), want ${status}`);
    if (param !== undefined) check(e.param === param, `${what}: param ${e.param}, want ${param}`);
  }
}

async function streamChat(params) {
  const stream = await client.chat.completions.create({ ...params, stream: true,
    stream_options: { include_usage: true } });
  const out = { content: '', reasoning: '', calls: [], finish: null, usage: null, roles: 0 };
  for await (const ch of stream) {
    if (ch.usage) out.usage = ch.usage;
    for (const c of ch.choices) {
      if (c.delta.role) out.roles++;
      out.content += c.delta.content ?? '';
      out.reasoning += c.delta.reasoning_content ?? '';
      for (const t of c.delta.tool_calls ?? []) {
        if (!out.calls[t.index]) out.calls[t.index] = { id: t.id, name: '', arguments: '' };
        out.calls[t.index].name += t.function?.name ?? '';
        out.calls[t.index].arguments += t.function?.arguments ?? '';
      }
      if (c.finish_reason) out.finish = c.finish_reason;
    }
  }
  return out;
}

const msgs = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'And it came to pass' },
];

async function general() {
  // /v1/models
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  check(ids.length === 1 && ids[0] === model, `models: ${JSON.stringify(ids)}`);

  // chat, then the same streamed: the same text, finish reason and usage
  const params = { model, messages: msgs, max_tokens: 24, temperature: 0 };
  const chat = await client.chat.completions.create(params);
  const text = chat.choices[0].message.content;
  check(chat.object === 'chat.completion' && chat.choices.length === 1, 'chat: shape');
  check(typeof text === 'string' && text.length > 0, `chat: content ${JSON.stringify(text)}`);
  check(chat.usage.completion_tokens >= 1 && chat.usage.total_tokens ===
        chat.usage.prompt_tokens + chat.usage.completion_tokens, 'chat: usage');
  const s = await streamChat(params);
  check(s.content === text, `stream: ${JSON.stringify(s.content)} vs ${JSON.stringify(text)}`);
  check(s.roles === 1, 'stream: one role delta');
  check(s.finish === chat.choices[0].finish_reason, `stream: finish ${s.finish}`);
  check(s.usage && s.usage.completion_tokens === chat.usage.completion_tokens &&
        s.usage.prompt_tokens === chat.usage.prompt_tokens, 'stream: include_usage');

  // max_completion_tokens is max_tokens
  const short = await client.chat.completions.create({ ...params, max_tokens: undefined,
    max_completion_tokens: 3 });
  check(short.usage.completion_tokens === 3 && short.choices[0].finish_reason === 'length',
        'max_completion_tokens');

  // stop strings: the text ends right before the first one, never including it
  const at = text.search(/\S\S\S/);
  if (at >= 0 && at + 3 < text.length) {
    const stop = text.slice(at + 1, at + 3);
    const want = text.slice(0, text.indexOf(stop));
    const st = await client.chat.completions.create({ ...params, stop: ['\u0001never', stop] });
    check(st.choices[0].message.content === want && st.choices[0].finish_reason === 'stop',
          `stop ${JSON.stringify(stop)}: ${JSON.stringify(st.choices[0].message.content)}, ` +
          `want ${JSON.stringify(want)}`);
    const ss = await streamChat({ ...params, stop });
    check(ss.content === want, `stop streamed: ${JSON.stringify(ss.content)}`);
  } else {
    check(false, `chat text too short for the stop check: ${JSON.stringify(text)}`);
  }

  // logprobs: one entry per token, the greedy token on top, the tokens spell the text
  // (logprobs are the model's own distribution: with no penalty the greedy token is on top)
  const lp = await client.chat.completions.create({ ...params, logprobs: true, top_logprobs: 3,
    repetition_penalty: 1 });
  const lc = lp.choices[0].logprobs?.content ?? [];
  const plain = await client.chat.completions.create({ ...params, repetition_penalty: 1 });
  check(lp.choices[0].message.content === plain.choices[0].message.content, 'logprobs: same text');
  check(lc.map((e) => e.token).join('') === plain.choices[0].message.content,
        'logprobs: tokens spell the text');
  check(lc.length === lp.usage.completion_tokens, `logprobs: ${lc.length} entries`);
  for (const e of lc) {
    const t = e.top_logprobs;
    if (!(t.length === 3 && t[0].token === e.token && Math.abs(t[0].logprob - e.logprob) < 1e-5 &&
          e.logprob <= 0 && t[0].logprob >= t[1].logprob && t[1].logprob >= t[2].logprob &&
          Array.isArray(e.bytes))) {
      check(false, `logprobs entry ${JSON.stringify(e)}`);
      break;
    }
  }

  // completions, with logprobs, and streamed
  const cp = { model, prompt: 'And it came to pass', max_tokens: 16, temperature: 0 };
  const comp = await client.completions.create({ ...cp, logprobs: 2 });
  const ctext = comp.choices[0].text;
  check(comp.object === 'text_completion' && ctext.length > 0, 'completions: text');
  const clp = comp.choices[0].logprobs;
  check(clp.tokens.length === comp.usage.completion_tokens && clp.tokens.join('') === ctext &&
        clp.text_offset[0] === 0 && clp.top_logprobs.every((o) => Object.keys(o).length >= 1),
        'completions: logprobs');
  let streamed = '';
  for await (const ch of await client.completions.create({ ...cp, stream: true }))
    streamed += ch.choices[0]?.text ?? '';
  check(streamed === ctext, `completions stream: ${JSON.stringify(streamed)}`);

  // two identical requests at once each give the text one gives alone
  const same = await Promise.all([0, 1].map(() => client.chat.completions.create(params)));
  check(same.every((r) => r.choices[0].message.content === text), 'concurrent requests');

  // thinking off renders the empty <think></think> block: a longer prompt
  const nothink = await client.chat.completions.create({ ...params,
    chat_template_kwargs: { enable_thinking: false } });
  check(nothink.usage.prompt_tokens > chat.usage.prompt_tokens, 'enable_thinking: false');

  // tools are rendered into the prompt; tool_choice none leaves them out
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather.',
    parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const withTools = await client.chat.completions.create({ ...params, tools });
  const noneTools = await client.chat.completions.create({ ...params, tools, tool_choice: 'none' });
  check(withTools.usage.prompt_tokens > chat.usage.prompt_tokens + 20, 'tools rendered');
  check(noneTools.usage.prompt_tokens === chat.usage.prompt_tokens, 'tool_choice none');

  // errors
  await expectError({ ...params, n: 2 }, 400, 'n', 'n > 1');
  await expectError({ ...params, model: 'no-such-model' }, 400, 'model', 'unknown model');
  await expectError({ ...params, temperature: 'hot' }, 400, 'temperature', 'wrong type');
  await expectError({ ...params, messages: [] }, 400, 'messages', 'no messages');
  const bad = new OpenAI({ baseURL: base, apiKey: 'wrong-key', maxRetries: 0 });
  await expectError(params, 401, undefined, 'wrong key', bad);
  try {
    await bad.models.list();
    check(false, 'wrong key: models listed');
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError, `wrong key: ${e.constructor.name}`);
  }

  // abort mid-stream: the request is cancelled and its KV freed
  const cancelled0 = await metric('layerpipe_request_cancelled_total');
  const ac = new AbortController();
  const long = await client.completions.create({ ...cp, max_tokens: 1500, stream: true },
                                               { signal: ac.signal });
  let chunks = 0;
  try {
    for await (const ch of long) {
      void ch;
      if (++chunks === 3) ac.abort();
    }
  } catch (e) {
    check(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError',
          `abort: ${e.constructor.name}`);
  }
  // (chunks already received may still come out of the iterator after abort)
  check(chunks >= 3 && chunks < 100, `abort: ${chunks} chunks`);
  let cancelled = NaN, running = NaN, kv = NaN;
  for (let i = 0; i < 100; i++) {
    cancelled = await metric('layerpipe_request_cancelled_total');
    running = await metric('layerpipe_num_requests_running');
    kv = await metric('layerpipe_kv_cache_usage_perc');
    if (cancelled === cancelled0 + 1 && running === 0 && kv === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  check(cancelled === cancelled0 + 1 && running === 0 && kv === 0,
        `abort: cancelled ${cancelled0} -> ${cancelled}, running ${running}, kv ${kv}`);
}

async function scripted() {
  const tools = [{ type: 'function', function: { name: 'get_weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const params = { model, messages: [{ role: 'user', content: 'Weather in Paris?' }],
    max_tokens: 32, temperature: 0, tools };
  const r = await client.chat.completions.create(params);
  const m = r.choices[0].message;
  check(m.reasoning_content === 'Let', `reasoning_content ${JSON.stringify(m.reasoning_content)}`);
  check(m.content === 'And', `content ${JSON.stringify(m.content)}`);
  check(r.choices[0].finish_reason === 'tool_calls', `finish ${r.choices[0].finish_reason}`);
  const calls = m.tool_calls ?? [];
  check(calls.length === 1 && calls[0].type === 'function' &&
        calls[0].function.name === 'get_weather' && typeof calls[0].id === 'string' &&
        JSON.parse(calls[0].function.arguments).city === 'Paris',
        `tool_calls ${JSON.stringify(calls)}`);
  const s = await streamChat(params);
  check(s.reasoning === 'Let' && s.content === 'And' && s.finish === 'tool_calls',
        `stream: ${JSON.stringify(s)}`);
  check(s.calls.length === 1 && s.calls[0].name === 'get_weather' &&
        s.calls[0].arguments === calls[0].function.arguments, 'stream: tool call delta');

  // without tools the same output is plain content; the reasoning is still split
  const plain = await client.chat.completions.create({ ...params, tools: undefined });
  check(plain.choices[0].message.reasoning_content === 'Let' &&
        plain.choices[0].message.content.startsWith('And<tool_call>') &&
        !plain.choices[0].message.tool_calls && plain.choices[0].finish_reason === 'stop',
        `no tools: ${JSON.stringify(plain.choices[0])}`);

  // the round trip: the call and its result go back, and the server takes them
  const back = await client.chat.completions.create({ ...params, messages: [
    ...params.messages, m,
    { role: 'tool', tool_call_id: calls[0]?.id ?? 'x', content: '{"temp_c": 21}' }] });
  check(back.usage.prompt_tokens > r.usage.prompt_tokens + 10, 'round trip: history rendered');
  check(back.choices[0].message.tool_calls?.length === 1, 'round trip: answered');
}

// 16 streams at once at temperature 0 each give the text they give alone.
async function concurrent() {
  const words = ['And it came to pass', 'The LORD said', 'In the beginning', 'Blessed are',
    'Then the king', 'And he said unto them', 'Behold', 'Now the serpent'];
  const prompts = [];
  for (let i = 0; i < 16; i++) prompts.push(words[i % 8] + (i >= 8 ? ', and' : ''));
  const params = (p) => ({ model, prompt: p, max_tokens: 24, temperature: 0 });
  const alone = [];
  for (const p of prompts) alone.push((await client.completions.create(params(p))).choices[0].text);
  const together = await Promise.all(prompts.map(async (p) => {
    let t = '';
    for await (const ch of await client.completions.create({ ...params(p), stream: true }))
      t += ch.choices[0]?.text ?? '';
    return t;
  }));
  for (let i = 0; i < 16; i++)
    check(together[i] === alone[i], `concurrent ${i}: ${JSON.stringify(together[i])} alone ` +
          `${JSON.stringify(alone[i])}`);
}

try {
  if (mode === 'scripted') await scripted();
  else if (mode === 'concurrent') await concurrent();
  else await general();
} catch (e) {
  check(false, `exception: ${e.stack ?? e}`);
}
console.log(`openai_client ${mode}: ${checks - failures} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
