// Bull's producer or worker through the proxy, for the drain test: `produce` adds N
// distinct jobs; `work` processes until N jobs completed (or 60 s passed). Prints what the
// client saw as JSON: errors raised, and for `work` the job numbers processed.
// Usage: node bull_drain.js <proxy port> produce|work <N>
const Bull = require('../node_modules/bull');

const [port, mode, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];

(async () => {
  const errors = [];
  const queue = new Bull('emails', { redis: { host: '127.0.0.1', port } });
  queue.on('error', (e) => errors.push(String(e)));
  if (mode === 'produce') {
    for (let i = 0; i < n; i++) {
      try {
        await queue.add({ i });
      } catch (e) {
        errors.push(String(e));
      }
    }
    await queue.close();
    console.log(JSON.stringify({ errors }));
    return;
  }
  const processed = [];
  let completed = 0;
  let finish;
  const finished = new Promise((done) => { finish = done; });
  const timer = setTimeout(() => finish(), 60000);
  queue.on('failed', (job, e) => errors.push(`job ${job.id} failed: ${e}`));
  queue.on('completed', () => {
    completed += 1;
    if (completed >= n) finish();
  });
  queue.process(4, async (job) => { processed.push(job.data.i); });
  await finished;
  clearTimeout(timer);
  await queue.close();
  console.log(JSON.stringify({ errors, processed: processed.sort((a, b) => a - b) }));
})().catch((e) => { console.error(e); process.exit(1); });
