// Bee-Queue's producer or worker through the proxy, for the drain test: `produce` saves N
// distinct jobs; `work` processes until N jobs were processed (or 60 s passed). Prints what
// the client saw as JSON: errors raised, and for `work` the job numbers processed.
// Usage: node beequeue_drain.js <proxy port> produce|work <N>
const Queue = require('../node_modules/bee-queue');

const [port, mode, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];

(async () => {
  const errors = [];
  const queue = new Queue('emails', {
    redis: { host: '127.0.0.1', port }, isWorker: mode === 'work', getEvents: false,
  });
  queue.on('error', (e) => errors.push(String(e)));
  await queue.ready();
  if (mode === 'produce') {
    for (let i = 0; i < n; i++) {
      try {
        await queue.createJob({ i }).save();
      } catch (e) {
        errors.push(String(e));
      }
    }
    await queue.close();
    console.log(JSON.stringify({ errors }));
    return;
  }
  const processed = [];
  queue.on('failed', (job, e) => errors.push(`job ${job.id} failed: ${e}`));
  await new Promise((done) => {
    const timer = setTimeout(done, 60000);
    queue.process(4, async (job) => {
      processed.push(job.data.i);
      if (processed.length >= n) {
        clearTimeout(timer);
        setTimeout(done, 200);
      }
    });
  });
  await queue.close();
  console.log(JSON.stringify({ errors, processed: processed.sort((a, b) => a - b) }));
})().catch((e) => { console.error(e); process.exit(1); });
