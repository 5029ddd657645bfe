#!/usr/bin/env node
// Tutorial-six peers in amqplib instrumented with OpenTelemetry
// (@opentelemetry/instrumentation-amqplib), for the interop test of W3C trace context
// (traceparent / tracestate headers). The same interface and checks as otel_peer.py:
//
// client --queue Q N...: in one parent span ("rpc-job"), calls fib(n) for each n (the
//   instrumentation injects the traceparent of its publish span into each request), prints
//   each reply body, one per line. Checks that every recorded span and each reply's
//   traceparent have the job's trace id, and that the reply's span id is the server's own
//   (not the request's). Prints "trace <id>" on stderr.
// server --queue Q --count K: serves fib(n) for K requests, then exits. The
//   instrumentation's consume span continues the request's traceparent; the reply is
//   published inside it. Checks, per request, that the spans and the reply's traceparent
//   have the request's trace id; prints that trace id, one per line.
//
// Exit status: 0 ok, 1 a check failed or a timeout (message on stderr).
'use strict';

const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { SimpleSpanProcessor, InMemorySpanExporter } = require('@opentelemetry/sdk-trace-base');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { AmqplibInstrumentation } = require('@opentelemetry/instrumentation-amqplib');
const api = require('@opentelemetry/api');
const { randomUUID } = require('crypto');

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
provider.register();
registerInstrumentations({ instrumentations: [new AmqplibInstrumentation()] });
// After the instrumentation is registered, so that amqplib is patched.
const amqp = require('amqplib');

function fail(message) {
  process.stderr.write(`otel_peer.js: ${message}\n`);
  process.exit(1);
}

// The trace id of a traceparent header value (null if absent or malformed).
function traceIdOf(traceparent) {
  if (typeof traceparent !== 'string' && !Buffer.isBuffer(traceparent)) return null;
  const parts = String(traceparent).split('-');
  return parts.length >= 4 && parts[1].length === 32 ? parts[1] : null;
}

function fib(n) {
  let [a, b] = [0n, 1n];
  for (let i = 0; i < n; i++) [a, b] = [b, a + b];
  return a;
}

function parseArgs(argv) {
  const args = { mode: argv[0], n: [], queue: 'rpc_queue', count: 1, timeout: 30,
    url: process.env.AMQP_URI || 'amqp://guest:guest@localhost:5672/' };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--queue') args.queue = argv[++i];
    else if (a === '--count') args.count = Number(argv[++i]);
    else if (a === '--timeout') args.timeout = Number(argv[++i]);
    else if (a === '--url') args.url = argv[++i];
    else if (/^\d+$/.test(a)) args.n.push(Number(a));
    else fail(`unknown argument ${JSON.stringify(a)}`);
  }
  if (!['client', 'server'].includes(args.mode)) fail('usage: otel_peer.js client|server --queue Q [N...] [--count K]');
  if (!(args.count > 0) || !(args.timeout > 0)) fail('--count and --timeout must be positive');
  return args;
}

// Resolves when `check()` holds, rejects after `seconds`.
function waitFor(check, seconds, what) {
  const deadline = Date.now() + seconds * 1000;
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (check()) resolve();
      else if (Date.now() > deadline) reject(new Error(`no ${what} within ${seconds}s`));
      else setTimeout(poll, 10);
    };
    poll();
  });
}

const hex = (id) => id; // span context ids are already lowercase hex strings in JS

async function runClient(args) {
  if (args.n.length === 0) fail('client: give at least one N');
  const tracer = api.trace.getTracer('rabbit-rpc-interop');
  const conn = await amqp.connect(args.url);
  const ch = await conn.createChannel();
  const { queue: replyTo } = await ch.assertQueue('', { exclusive: true });
  const replies = new Map();
  await ch.consume(replyTo, (msg) => {
    replies.set(msg.properties.correlationId,
      { traceparent: (msg.properties.headers || {}).traceparent, body: msg.content.toString() });
  }, { noAck: true });
  const replyParents = [];
  let jobTrace;
  await tracer.startActiveSpan('rpc-job', async (job) => {
    jobTrace = hex(job.spanContext().traceId);
    for (const n of args.n) {
      const corrId = randomUUID();
      ch.sendToQueue(args.queue, Buffer.from(String(n)), { replyTo, correlationId: corrId });
      await waitFor(() => replies.has(corrId), args.timeout, `reply for fib(${n})`)
        .catch((e) => fail(e.message));
      const { traceparent, body } = replies.get(corrId);
      replies.delete(corrId);
      process.stdout.write(`${body}\n`);
      replyParents.push(traceparent);
    }
    job.end();
  });
  await conn.close();
  const spans = exporter.getFinishedSpans();
  const sends = spans.filter((s) => s.kind === api.SpanKind.PRODUCER);
  const receives = spans.filter((s) => s.kind === api.SpanKind.CONSUMER);
  if (sends.length !== args.n.length || receives.length !== args.n.length) {
    fail(`expected ${args.n.length} send and receive spans, got ${sends.length} and ` +
      `${receives.length}: ${spans.map((s) => s.name).join(', ')}`);
  }
  for (const span of spans) {
    const got = span.spanContext().traceId;
    if (got !== jobTrace) fail(`span ${JSON.stringify(span.name)} is in trace ${got}, not the job's ${jobTrace}`);
  }
  const sendIds = new Set(sends.map((s) => s.spanContext().spanId));
  for (const tp of replyParents) {
    if (traceIdOf(tp) !== jobTrace) fail(`reply traceparent ${JSON.stringify(String(tp))} is not in the job's trace ${jobTrace}`);
    if (sendIds.has(String(tp).split('-')[2])) fail(`reply traceparent ${JSON.stringify(String(tp))} echoes the request's span`);
  }
  process.stderr.write(`trace ${jobTrace}\n`);
}

async function runServer(args) {
  const conn = await amqp.connect(args.url);
  const ch = await conn.createChannel();
  await ch.assertQueue(args.queue, { durable: true });
  await ch.prefetch(1);
  const served = [];
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  await ch.consume(args.queue, (msg) => {
    const props = msg.properties;
    const requestTrace = traceIdOf((props.headers || {}).traceparent);
    const text = msg.content.toString();
    const reply = /^\d+$/.test(text) ? String(fib(Number(text))) : 'bad request';
    const replyProps = { correlationId: props.correlationId, headers: {} };
    ch.sendToQueue(props.replyTo, Buffer.from(reply), replyProps);
    ch.ack(msg);
    served.push([requestTrace, replyProps.headers.traceparent]);
    if (served.length >= args.count) done();
  });
  // Ready: the interop test waits for this consumer.
  await finished;
  // The channel first: amqplib's connection close can overtake a publish still queued on it.
  await ch.close();
  await conn.close();
  const spans = exporter.getFinishedSpans();
  served.forEach(([requestTrace, replyParent], i) => {
    if (requestTrace === null) fail(`request ${i + 1} had no valid traceparent`);
    if (traceIdOf(replyParent) !== requestTrace) {
      fail(`reply ${i + 1} traceparent ${JSON.stringify(String(replyParent))} is not in trace ${requestTrace}`);
    }
    const kinds = spans.filter((s) => s.spanContext().traceId === requestTrace)
      .map((s) => api.SpanKind[s.kind]).sort();
    if (kinds.join(',') !== 'CONSUMER,PRODUCER') fail(`request ${i + 1}: spans in trace ${requestTrace}: ${kinds}`);
    process.stdout.write(`${requestTrace}\n`);
  });
}

const args = parseArgs(process.argv.slice(2));
(args.mode === 'client' ? runClient(args) : runServer(args)).catch((e) => fail(e.message || String(e)));
