// BullMQ's producer or worker through the proxy, for the drain test: `produce` adds N
// distinct jobs; `work` runs a Worker until N jobs completed (or 60 s passed). Prints what
// the client saw as JSON: errors raised, and for `work` the job numbers processed.
// Usage: node bullmq_drain.js <proxy port> produce|work <N>
const { Queue, Worker } = require('../node_modules/bullmq');

const [port, mode, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };

(async () => {
  const errors = [];
  if (mode === 'produce') {
    const queue = new Queue('emails', { connection });
    for (let i = 0; i < n; i++) {
      try {
        await queue.add('send', { i });
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
  const worker = new Worker('emails', async (job) => { processed.push(job.data.i); },
    { connection, concurrency: 4 });
  worker.on('error', (e) => errors.push(String(e)));
  worker.on('failed', (job, e) => errors.push(`job ${job && job.id} failed: ${e}`));
  worker.on('completed', () => {
    completed += 1;
    if (completed >= n) finish();
  });
  await finished;
  clearTimeout(timer);
  await worker.close();
  console.log(JSON.stringify({ errors, processed: processed.sort((a, b) => a - b) }));
})().catch((e) => { console.error(e); process.exit(1); });
