// BullMQ with its documented Redis Cluster setting, a hash-tagged prefix ('{bull}', so
// every key of a queue is in one slot), through respguard in front of a cluster: a Queue
// adds N jobs (half one at a time, half with addBulk), a Worker processes them, then the
// queue's job counts are read. Prints what the client saw as JSON (last line): errors
// raised, the job numbers processed (sorted), the job counts and the sum of the values
// the completed jobs returned.
// Usage: node cluster_bullmq.js PORT redis|cluster N
//   redis: a connection's options (new Redis); cluster: a Redis.Cluster seeded with PORT
const { Queue, Worker } = require("bullmq");
const Redis = require("ioredis");

const [port, client, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const host = "127.0.0.1";
const prefix = "{bull}";

function connection() {
  if (client === "cluster") {
    return new Redis.Cluster([{ host, port }], { redisOptions: { maxRetriesPerRequest: null } });
  }
  return { host, port, maxRetriesPerRequest: null };
}

(async () => {
  const errors = [];
  const queue = new Queue("emails", { connection: connection(), prefix });
  queue.on("error", (e) => errors.push(`queue: ${e}`));
  const half = Math.floor(n / 2);
  for (let i = 0; i < half; i++) {
    await queue.add("send", { i });
  }
  await queue.addBulk(
    Array.from({ length: n - half }, (_, k) => ({ name: "send", data: { i: half + k } })),
  );
  const processed = [];
  let finish;
  const finished = new Promise((done) => { finish = done; });
  const timer = setTimeout(() => {
    errors.push(`timed out with ${processed.length} of ${n} processed`);
    finish();
  }, 60000);
  let completed = 0;
  const worker = new Worker("emails", async (job) => { processed.push(job.data.i); return job.data.i * 2; },
    { connection: connection(), prefix, concurrency: 8 });
  worker.on("error", (e) => errors.push(`worker: ${e}`));
  worker.on("failed", (job, e) => errors.push(`job ${job && job.id} failed: ${e}`));
  worker.on("completed", () => {
    completed += 1;
    if (completed >= n) finish();
  });
  await finished;
  clearTimeout(timer);
  await worker.close();
  const counts = await queue.getJobCounts("waiting", "active", "completed", "failed", "delayed");
  const returned = (await queue.getCompleted(0, -1)).reduce((sum, job) => sum + job.returnvalue, 0);
  await queue.close();
  console.log(JSON.stringify({
    errors,
    processed: processed.sort((a, b) => a - b),
    counts,
    returned,
  }));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
