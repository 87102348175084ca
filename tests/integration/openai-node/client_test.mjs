// Drives an OpenAI-compatible server (tokenrelay or vllm-sim) with the
// official OpenAI Node client and prints a JSON summary of what the client saw.
//
//   node client_test.mjs http://127.0.0.1:PORT/v1 [--request-id PREFIX]
//                        [--model NAME] [--max-tokens N]
//
// Every request carries an X-Request-Id of PREFIX-<case>, so two runs with the
// same prefix against servers with the same seed/--created see the same ids
// and text (vllm-sim derives the text from the request id). The X-Request-Id
// the response carried (vllm-sim sends none, tokenrelay echoes it) is only
// recorded here; the caller decides what to expect. Used by
// tests/integration/test_openai_client.py, which compares a run through the
// proxy with a run straight against a simulator. Exits 1 on any assertion
// failure (the summary, with "ok": false and the error, still goes to stdout).

import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { VERSION as OPENAI_VERSION } from 'openai/version';

function parseArgs(argv) {
  const out = { baseURL: null, prefix: 'openai-node', model: 'sim-model', maxTokens: 20 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--request-id') out.prefix = argv[++i];
    else if (a === '--model') out.model = argv[++i];
    else if (a === '--max-tokens') out.maxTokens = Number(argv[++i]);
    else if (!a.startsWith('--') && out.baseURL === null) out.baseURL = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!out.baseURL) {
    throw new Error('usage: node client_test.mjs BASE_URL [--request-id PREFIX] [--model NAME]');
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const client = new OpenAI({
  baseURL: args.baseURL,
  apiKey: 'unused',
  // A proxy hiccup must fail the test, not be papered over by a retry.
  maxRetries: 0,
  timeout: 30_000,
});

const summary = {
  ok: false,
  base_url: args.baseURL,
  openai_version: OPENAI_VERSION,
  node_version: process.version,
};

function rid(name) {
  return `${args.prefix}-${name}`;
}

function responseInfo(response) {
  return {
    status: response.status,
    content_type: response.headers.get('content-type'),
    x_request_id: response.headers.get('x-request-id'),
  };
}

// --- streaming chat completion ------------------------------------------------

async function chatStream() {
  const id = rid('chat-stream');
  const { data: stream, response } = await client.chat.completions
    .create(
      {
        model: args.model,
        messages: [{ role: 'user', content: 'Hello through the proxy!' }],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: args.maxTokens,
        // vLLM extension; the client sends unknown body fields as they are.
        ignore_eos: true,
      },
      { headers: { 'X-Request-Id': id } },
    )
    .withResponse();
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);

  const out = { response: responseInfo(response), chunks };
  summary.chat_stream = out;
  assert.equal(response.status, 200);
  assert.match(out.response.content_type, /^text\/event-stream/);
  assert.ok(chunks.length > 0, 'no chunks');

  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1, `chunk ids differ: ${[...ids]}`);
  out.id = chunks[0].id;
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.model, args.model);
  }
  const withChoices = chunks.filter((c) => c.choices.length > 0);
  const usageChunks = chunks.filter((c) => c.usage);
  assert.equal(withChoices[0].choices[0].delta.role, 'assistant', 'first delta has no role');

  const deltas = [];
  const finish = [];
  for (const c of withChoices) {
    const ch = c.choices[0];
    if (typeof ch.delta.content === 'string' && ch.delta.content !== '') deltas.push(ch.delta.content);
    if (ch.finish_reason) finish.push(ch.finish_reason);
  }
  out.n_chunks = chunks.length;
  out.content_deltas = deltas;
  out.text = deltas.join('');
  out.finish_reasons = finish;
  out.finish_reason = finish[0] ?? null;
  out.usage = usageChunks.length ? usageChunks[0].usage : null;

  assert.deepEqual(finish, ['length'], 'exactly one finish_reason "length" (ignore_eos)');
  assert.equal(usageChunks.length, 1, 'exactly one usage chunk');
  assert.equal(chunks.at(-1), usageChunks[0], 'usage chunk is the last one');
  assert.deepEqual(usageChunks[0].choices, []);
  assert.equal(out.usage.completion_tokens, args.maxTokens);
  assert.equal(out.usage.total_tokens, out.usage.prompt_tokens + out.usage.completion_tokens);
  assert.equal(deltas.length, args.maxTokens, 'one content delta per token');
  assert.ok(out.text.length > 0);
}

// --- streaming legacy completion ---------------------------------------------

async function completionStream() {
  const id = rid('completion-stream');
  const { data: stream, response } = await client.completions
    .create(
      {
        model: args.model,
        prompt: 'Once upon a time',
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: args.maxTokens,
        ignore_eos: true,
      },
      { headers: { 'X-Request-Id': id } },
    )
    .withResponse();
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);

  const out = { response: responseInfo(response), chunks };
  summary.completion_stream = out;
  assert.equal(response.status, 200);
  assert.match(out.response.content_type, /^text\/event-stream/);
  assert.ok(chunks.length > 0, 'no chunks');
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1, 'chunk ids differ');
  out.id = chunks[0].id;

  const texts = [];
  const finish = [];
  for (const c of chunks) {
    assert.equal(c.object, 'text_completion');
    if (c.choices.length) {
      texts.push(c.choices[0].text);
      if (c.choices[0].finish_reason) finish.push(c.choices[0].finish_reason);
    }
  }
  const usageChunks = chunks.filter((c) => c.usage);
  out.n_chunks = chunks.length;
  out.text_pieces = texts;
  out.text = texts.join('');
  out.finish_reasons = finish;
  out.finish_reason = finish[0] ?? null;
  out.usage = usageChunks.length ? usageChunks[0].usage : null;

  assert.deepEqual(finish, ['length']);
  assert.equal(usageChunks.length, 1, 'exactly one usage chunk');
  assert.equal(chunks.at(-1), usageChunks[0], 'usage chunk is the last one');
  assert.equal(out.usage.completion_tokens, args.maxTokens);
  assert.equal(texts.length, args.maxTokens, 'one text piece per token');
  assert.ok(out.text.length > 0);
}

// --- non-streaming chat completion -------------------------------------------

async function chatNonStreaming() {
  const id = rid('chat');
  const { data: completion, response } = await client.chat.completions
    .create(
      {
        model: args.model,
        messages: [{ role: 'user', content: 'Hello, once, without streaming.' }],
        max_tokens: 12,
        ignore_eos: true,
      },
      { headers: { 'X-Request-Id': id } },
    )
    .withResponse();
  summary.chat = { response: responseInfo(response), completion, request_id: completion._request_id };
  assert.equal(response.status, 200);
  assert.match(summary.chat.response.content_type, /^application\/json/);
  assert.equal(completion.object, 'chat.completion');
  assert.equal(completion.model, args.model);
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].message.role, 'assistant');
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.equal(completion.choices[0].finish_reason, 'length');
  assert.equal(completion.usage.completion_tokens, 12);
}

// --- models.list() -------------------------------------------------------------

async function modelsList() {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  summary.models = { ids: models.map((m) => m.id), data: models };
  assert.ok(summary.models.ids.includes(args.model), `${args.model} not in ${summary.models.ids}`);
  for (const m of models) assert.equal(m.object, 'model');
}

// --- unknown model -> APIError 404 ---------------------------------------------

async function expectNotFound(name, stream) {
  const model = `${args.prefix}-no-such-model`;
  const id = rid(name);
  let caught = null;
  try {
    const res = await client.chat.completions.create(
      {
        model,
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4,
        ...(stream ? { stream: true } : {}),
      },
      { headers: { 'X-Request-Id': id } },
    );
    if (stream) for await (const _ of res); // eslint-disable-line no-empty
  } catch (e) {
    caught = e;
  }
  const out = {
    raised: caught !== null,
    class: caught?.constructor?.name ?? null,
    is_api_error: caught instanceof OpenAI.APIError,
    is_not_found: caught instanceof OpenAI.NotFoundError,
    status: caught?.status ?? null,
    message: caught?.message ?? null,
    error: caught?.error ?? null,
    type: caught?.type ?? null,
    code: caught?.code ?? null,
    model,
  };
  summary[name] = out;
  assert.ok(out.raised, 'no error raised for an unknown model');
  assert.ok(out.is_api_error, `not an APIError: ${caught}`);
  assert.ok(out.is_not_found, `not a NotFoundError: ${out.class}`);
  assert.equal(out.status, 404);
  assert.equal(typeof out.error?.message, 'string', 'error body has no message');
  assert.ok(out.error.message.includes(model), `message does not name the model: ${out.error.message}`);
  assert.equal(out.message, `404 ${out.error.message}`);
}

const steps = [
  ['chat_stream', chatStream],
  ['completion_stream', completionStream],
  ['chat', chatNonStreaming],
  ['models', modelsList],
  ['error_not_found', () => expectNotFound('error_not_found', false)],
  ['error_not_found_stream', () => expectNotFound('error_not_found_stream', true)],
];

let failed = null;
for (const [name, fn] of steps) {
  try {
    await fn();
  } catch (e) {
    failed = { step: name, error: String(e?.stack ?? e) };
    break;
  }
}
summary.ok = failed === null;
if (failed) summary.failure = failed;
process.stdout.write(JSON.stringify(summary) + '\n');
if (failed) {
  process.stderr.write(`client_test.mjs: step ${failed.step} failed:\n${failed.error}\n`);
  process.exitCode = 1;
}
