// A retry storm from Bull (4.x) through the proxy: client A adds the same job 100 times,
// interleaved with 100 distinct jobs and two adds of one custom job id; client B (another
// connection name) adds it 3 times. Prints what the clients saw and what Redis holds, read
// directly (the wait list and the job hashes, so a job left without its list entry
// counts), as JSON.
// Usage: node bull_storm.js <proxy port> <redis port>
const Bull = require('../node_modules/bull');
const Redis = require('../node_modules/ioredis');

const [proxyPort, redisPort] = process.argv.slice(2).map(Number);

(async () => {
  const queue = (name) => new Bull('emails', {
    redis: { host: '127.0.0.1', port: proxyPort, connectionName: name },
  });
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
  for (let i = 0; i < 100; i++) {
    await add(a, { to: 'a@example.com' });
    await add(a, { to: `user${i}@example.com` });
  }
  await add(a, { to: 'fixed@example.com' }, { jobId: 'fixed' });
  await add(a, { to: 'fixed@example.com' }, { jobId: 'fixed' });
  for (let i = 0; i < 3; i++) await add(b, { to: 'a@example.com' });
  await a.close();
  await b.close();

  const direct = new Redis({ host: '127.0.0.1', port: redisPort });
  const waiting = await direct.lrange('bull:emails:wait', 0, -1);
  const jobKeys = (await direct.keys('bull:emails:*')).filter((k) => /^bull:emails:[^:]+$/.test(k)
    && !['bull:emails:id', 'bull:emails:wait'].includes(k));
  const data = await Promise.all(jobKeys.map((k) => direct.hget(k, 'data')));
  console.log(JSON.stringify({
    errors,
    queued: waiting.length,
    stored: jobKeys.length,
    same_job: data.filter((d) => d === '{"to":"a@example.com"}').length,
    distinct: data.filter((d) => /user\d+@/.test(d)).length,
    fixed: waiting.filter((id) => id === 'fixed').length,
    dropped_ids: ids.filter((id) => id === 'respguard-duplicate').length,
  }));
  direct.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
