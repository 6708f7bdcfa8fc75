// The second workload's sink: a plain Node.js http server, not bench/target.py, so the
// benchmark also runs against a target none of the systems was tuned on.
//
//   node bench/node/sink.mjs --port P [--min-ms 5] [--max-ms 20]
//
// - POST /<any>/<n>  answers 200 after a delay drawn uniformly from [min-ms, max-ms], counted
//                    when answered (like bench/target.py's /lat/)
// - GET /stats       the JSON of bench/target.py's /stats: ok, unique (distinct "seq"), seq_min,
//                    seq_max, failed (always 0), duplicates, first_at, last_at, body_min,
//                    body_max, latencies_ms (publish "t" to answer, sampled), peak_held
// - POST /reset      clears the counters

import http from 'node:http';

const MAX_SAMPLES = 200_000;

function options(argv) {
  const opts = { port: 0, 'min-ms': 5, 'max-ms': 20 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in opts) || argv[i + 1] === undefined) {
      process.stderr.write(`usage: sink.mjs --port P [--min-ms A] [--max-ms B]\n`);
      process.exit(2);
    }
    opts[name] = Number(argv[i + 1]);
  }
  return opts;
}

function fresh() {
  return {
    ok: 0, seen: new Set(), duplicates: 0, seqMin: null, seqMax: null, firstAt: 0, lastAt: 0,
    bodyMin: 0, bodyMax: 0, latencies: [], held: 0, peakHeld: 0,
  };
}

const opts = options(process.argv.slice(2));
let stats = fresh();

function count(body) {
  const now = Date.now() / 1000;
  stats.ok += 1;
  if (!stats.firstAt) stats.firstAt = now;
  stats.lastAt = now;
  stats.bodyMin = stats.bodyMin ? Math.min(stats.bodyMin, body.length) : body.length;
  stats.bodyMax = Math.max(stats.bodyMax, body.length);
  let data;
  try {
    data = JSON.parse(body.toString());
  } catch {
    return;
  }
  const seq = data?.seq;
  if (stats.seen.has(seq)) stats.duplicates += 1;
  else {
    stats.seen.add(seq);
    if (Number.isInteger(seq)) {
      stats.seqMin = stats.seqMin === null ? seq : Math.min(stats.seqMin, seq);
      stats.seqMax = stats.seqMax === null ? seq : Math.max(stats.seqMax, seq);
    }
  }
  if (stats.latencies.length < MAX_SAMPLES && typeof data.t === 'number') {
    stats.latencies.push((now - data.t) * 1000);
  }
}

function answer(res, status, body, type = 'text/plain') {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    if (req.url === '/stats') {
      answer(res, 200, JSON.stringify({
        ok: stats.ok, unique: stats.seen.size, seq_min: stats.seqMin, seq_max: stats.seqMax,
        failed: 0, duplicates: stats.duplicates, first_at: stats.firstAt, last_at: stats.lastAt,
        body_min: stats.bodyMin, body_max: stats.bodyMax, latencies_ms: stats.latencies,
        peak_held: stats.peakHeld,
      }), 'application/json');
      return;
    }
    if (req.url === '/reset') {
      stats = fresh();
      answer(res, 200, 'ok');
      return;
    }
    const body = Buffer.concat(chunks);
    const mine = stats; // a reset while held does not count this request in the new run
    mine.held += 1;
    mine.peakHeld = Math.max(mine.peakHeld, mine.held);
    const delay = opts['min-ms'] + Math.random() * (opts['max-ms'] - opts['min-ms']);
    setTimeout(() => {
      mine.held -= 1;
      if (mine === stats) count(body);
      answer(res, 200, 'ok');
    }, delay);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(opts.port, '127.0.0.1', () => {
  process.stdout.write(`sink listening on ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
