// A retry storm from BullMQ through the proxy: client A adds the same job 1,000 times,
// interleaved with 100 distinct jobs and two adds of one custom job id; client B (another
// connection name) adds it 3 times. Prints what the clients saw and what Redis holds, read
// directly, as JSON.
// Usage: node bullmq_storm.js <proxy port> <redis port>
const { Queue } = require('../node_modules/bullmq');
const Redis = require('../node_modules/ioredis');

const [proxyPort, redisPort] = process.argv.slice(2).map(Number);

(async () => {
  const queue = (name) =>
    new Queue('emails', { connection: { host: '127.0.0.1', port: proxyPort, connectionName: name } });
  const a = queue('storm-a');
  const b = queue('storm-b');
  const errors = [];
  const ids = [];
  const add = async (q, data, opts) => {
    try {
      ids.push((await q.add('send', data, opts)).id);
    } catch (e) {
      errors.push(String(e));
    }
  };
  for (let i = 0; i < 1000; i++) {
    await add(a, { to: 'a@example.com' });
    if (i % 10 === 0) await add(a, { to: `user${i}@example.com` });
  }
  await add(a, { to: 'fixed@example.com' }, { jobId: 'fixed' });
  await add(a, { to: 'fixed@example.com' }, { jobId: 'fixed' });
  for (let i = 0; i < 3; i++) await add(b, { to: 'a@example.com' });
  await a.close();
  await b.close();

  const direct = new Redis({ host: '127.0.0.1', port: redisPort });
  const waiting = await direct.lrange('bull:emails:wait', 0, -1);
  const data = await Promise.all(waiting.map((id) => direct.hget(`bull:emails:${id}`, 'data')));
  const jobKeys = (await direct.keys('bull:emails:*')).filter((k) => /^bull:emails:[^:]+$/.test(k)
    && !['bull:emails:id', 'bull:emails:meta', 'bull:emails:wait', 'bull:emails:events', 'bull:emails:marker'].includes(k));
  console.log(JSON.stringify({
    errors,
    queued: waiting.length,
    same_job: data.filter((d) => d === '{"to":"a@example.com"}').length,
    distinct: data.filter((d) => /user\d+@/.test(d)).length,
    repushed: waiting.filter((id) => id === 'fixed').length,
    job_hashes: jobKeys.length,
    dropped_ids: ids.filter((id) => id === 'respguard-duplicate').length,
    fixed_ids: ids.filter((id) => id === 'fixed').length,
  }));
  direct.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
