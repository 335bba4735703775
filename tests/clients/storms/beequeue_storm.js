// A retry storm from Bee-Queue through the proxy: client A saves the same job 100 times,
// interleaved with 100 distinct jobs and two saves of one custom job id; client B (another
// connection) saves it 3 times. Prints what the clients saw and what Redis holds, read
// directly (the waiting list and the jobs hash, so a job left without its list entry
// counts), as JSON.
// Usage: node beequeue_storm.js <proxy port> <redis port>
const Queue = require('../node_modules/bee-queue');
const Redis = require('../node_modules/ioredis');

const [proxyPort, redisPort] = process.argv.slice(2).map(Number);

(async () => {
  const queue = () => new Queue('emails', {
    redis: { host: '127.0.0.1', port: proxyPort }, isWorker: false, getEvents: false,
  });
  const a = queue();
  const b = queue();
  await a.ready();
  await b.ready();
  await new Promise((done) => a.client.client('setname', 'storm-a', done));
  await new Promise((done) => b.client.client('setname', 'storm-b', done));
  const errors = [];
  const ids = [];
  const save = async (q, data, id) => {
    try {
      const job = q.createJob(data);
      if (id) job.setId(id);
      ids.push((await job.save()).id);
    } catch (e) {
      errors.push(String(e));
    }
  };
  for (let i = 0; i < 100; i++) {
    await save(a, { to: 'a@example.com' });
    await save(a, { to: `user${i}@example.com` });
  }
  await save(a, { to: 'fixed@example.com' }, 'fixed');
  await save(a, { to: 'fixed@example.com' }, 'fixed');
  for (let i = 0; i < 3; i++) await save(b, { to: 'a@example.com' });
  await a.close();
  await b.close();

  const direct = new Redis({ host: '127.0.0.1', port: redisPort });
  const waiting = await direct.lrange('bq:emails:waiting', 0, -1);
  const jobs = Object.values(await direct.hgetall('bq:emails:jobs')).map((j) => JSON.parse(j).data);
  console.log(JSON.stringify({
    errors,
    queued: waiting.length,
    stored: jobs.length,
    same_job: jobs.filter((d) => d.to === 'a@example.com').length,
    distinct: jobs.filter((d) => /user\d+@/.test(d.to)).length,
    fixed: waiting.filter((id) => id === 'fixed').length,
    dropped_ids: ids.filter((id) => id === 'respguard-duplicate').length,
  }));
  direct.disconnect();
})().catch((e) => { console.error(e); process.exit(1); });
