// Benchmark driver for BullMQ: the same command line, payload and output as
// bench/systems/common.py, so the harness treats it like the Python drivers.
//
//   node bench/node/bullmq.mjs enqueue --redis URL --targets a,b --n N [--payload-bytes B] [--payload-max M] [--retry R]
//   node bench/node/bullmq.mjs produce --redis URL --targets a,b --rate R --seconds S [--payload-bytes B] [--payload-max M] [--retry R]
//   node bench/node/bullmq.mjs work    --redis URL [--concurrency C] [--retry fixed|default]
//
// Fairness notes:
// - Jobs use removeOnComplete/removeOnFail so finished work is deleted, as a queue that drops
//   delivered messages does; BullMQ's default keeps every finished job hash in Redis forever.
// - Retries: attempts 10 with a fixed 100 ms backoff, i.e. common.MAX_TRIES / RETRY_DELAY_S;
//   with --retry default no backoff option, BullMQ's default: a failed job is retried at once.
// - Everything else is BullMQ's default (drainDelay, lock/stalled intervals, the events stream).
// - BullMQ 6 only lazy-loads ioredis through `require`, which does not exist in native ESM, so
//   we construct the ioredis client ourselves (from the URL) and hand BullMQ the instance.

import { performance } from 'node:perf_hooks';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';

const QUEUE = 'bench';
const JOB = 'deliver';
const BULK = 1000;
const MAX_TRIES = 10; // common.MAX_TRIES
const RETRY_DELAY_MS = 100; // common.RETRY_DELAY_S
const JOB_OPTS = { attempts: MAX_TRIES, removeOnComplete: true, removeOnFail: true };
const FIXED_BACKOFF = { type: 'fixed', delay: RETRY_DELAY_MS };
const jobOpts = (retry) => (retry === 'fixed' ? { ...JOB_OPTS, backoff: FIXED_BACKOFF } : JOB_OPTS);

function usage(message) {
  process.stderr.write(`${message}\nusage: bullmq.mjs {enqueue|produce|work} --redis URL ...\n`);
  process.exit(2);
}

const SHAPE = { 'payload-bytes': '300', 'payload-max': '0', retry: 'fixed' };

function parse(argv) {
  const [command, ...rest] = argv;
  const spec = {
    enqueue: { required: ['redis', 'targets', 'n'], defaults: { ...SHAPE } },
    produce: { required: ['redis', 'targets', 'rate', 'seconds'], defaults: { ...SHAPE } },
    work: { required: ['redis'], defaults: { concurrency: '100', retry: 'fixed' } },
  }[command];
  if (!spec) usage(`unknown command ${JSON.stringify(command)}`);
  const allowed = new Set([...spec.required, ...Object.keys(spec.defaults)]);
  const opts = { ...spec.defaults };
  for (let i = 0; i < rest.length; i++) {
    let arg = rest[i];
    if (!arg.startsWith('--')) usage(`unexpected argument ${arg}`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf('=');
    if (eq >= 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    } else {
      value = rest[++i];
      if (value === undefined) usage(`--${arg} needs a value`);
    }
    if (!allowed.has(arg)) usage(`unknown option --${arg} for ${command}`);
    opts[arg] = value;
  }
  for (const name of spec.required) if (opts[name] === undefined) usage(`--${name} is required`);
  const number = (name) => {
    const v = Number(opts[name]);
    if (!Number.isFinite(v)) usage(`--${name} must be a number`);
    return v;
  };
  if (!['fixed', 'default'].includes(opts.retry)) usage('--retry must be fixed or default');
  const args = { command, redis: opts.redis, retry: opts.retry };
  if (command === 'work') {
    args.concurrency = number('concurrency');
  } else {
    args.targets = opts.targets.split(',').filter(Boolean);
    if (!args.targets.length) usage('--targets is empty');
    args.payloadBytes = number('payload-bytes');
    args.payloadMax = number('payload-max');
    if (command === 'enqueue') args.n = number('n');
    else {
      args.rate = number('rate');
      args.seconds = number('seconds');
    }
  }
  return args;
}

// Same shape and size as common.payload: {"seq": i, "t": <unix s>, "pad": "xx.."} of ~size bytes,
// or of common.payload_size(seq, size, max) bytes with --payload-max.
function payload(seq, size, max) {
  if (max > size) size += (seq * 7919) % (max - size + 1);
  const base = { seq, t: Date.now() / 1000, pad: '' };
  const pad = Math.max(0, size - Buffer.byteLength(JSON.stringify(base)));
  base.pad = 'x'.repeat(pad);
  return base;
}

function report(enqueued, started) {
  process.stdout.write(
    `${JSON.stringify({ enqueued, seconds: (performance.now() - started) / 1000 })}\n`,
  );
}

function redis(url, extra = {}) {
  // ioredis parses redis:// and rediss:// URLs (host, port, db, user, password, TLS) itself.
  // maxRetriesPerRequest: null is what BullMQ requires for workers' blocking connections.
  return new Redis(url, { maxRetriesPerRequest: null, ...extra });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function enqueue(args) {
  const connection = redis(args.redis);
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  const { targets, n, payloadBytes, payloadMax, retry } = args;
  const started = performance.now();
  for (let start = 0; start < n; start += BULK) {
    const jobs = [];
    for (let i = start; i < Math.min(n, start + BULK); i++) {
      jobs.push({
        name: JOB,
        data: { url: targets[i % targets.length], payload: payload(i, payloadBytes, payloadMax) },
        opts: jobOpts(retry),
      });
    }
    await queue.addBulk(jobs);
  }
  report(n, started);
  await queue.close();
  connection.disconnect();
}

// Same pacing as common.paced: job i is sent at start + i / rate without waiting for earlier ones.
async function produce(args) {
  const connection = redis(args.redis);
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  const { targets, rate, seconds, payloadBytes, payloadMax, retry } = args;
  const total = Math.floor(rate * seconds);
  const started = performance.now();
  const pending = new Set();
  for (let i = 0; i < total; i++) {
    const delay = started + (i * 1000) / rate - performance.now();
    if (delay > 0) await sleep(delay);
    const p = queue.add(
      JOB,
      { url: targets[i % targets.length], payload: payload(i, payloadBytes, payloadMax) },
      jobOpts(retry),
    );
    pending.add(p);
    p.finally(() => pending.delete(p));
  }
  await Promise.all(pending);
  report(total, started);
  await queue.close();
  connection.disconnect();
}

async function work(args) {
  const { concurrency } = args;
  // One HTTP agent for the process; undici makes a Pool per origin, capped here at `concurrency`
  // connections (like aiohttp's TCPConnector(limit=concurrency) in the Python drivers).
  const agent = new Agent({ connections: concurrency });
  const connection = redis(args.redis);

  const processor = async (job) => {
    const { url, payload: body } = job.data;
    const res = await request(url, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'content-type': 'application/json' },
      dispatcher: agent,
    });
    await res.body.dump();
    if (res.statusCode < 200 || res.statusCode >= 300) {
      throw new Error(`HTTP ${res.statusCode} from ${url}`);
    }
  };

  const worker = new Worker(QUEUE, processor, { connection, concurrency });
  // Without an 'error' listener an EventEmitter error would crash the process.
  worker.on('error', (err) => process.stderr.write(`bullmq worker error: ${err}\n`));

  let closing = false;
  const stop = async () => {
    if (closing) return;
    closing = true;
    try {
      await worker.close();
      await agent.close();
      connection.disconnect();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  await worker.waitUntilReady();
}

const args = parse(process.argv.slice(2));
const run = { enqueue, produce, work }[args.command];
run(args).catch((err) => {
  process.stderr.write(`${err?.stack ?? err}\n`);
  process.exit(1);
});
