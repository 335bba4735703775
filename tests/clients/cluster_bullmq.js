// BullMQ with its documented Redis Cluster setting, a hash-tagged prefix ('{bull}', so
// every key of a queue is in one slot), through respguard in front of a cluster: a Queue
// adds N jobs (half one at a time, half with addBulk), a delayed job, a job that fails
// twice before it succeeds (retried with a backoff) and a flow (a parent job waiting for
// two children, from a FlowProducer); a Worker processes them while QueueEvents (a
// blocking XREAD of the queue's event stream) counts the completions. Prints what the
// client saw as JSON (last line): errors raised, the numbers of the N jobs processed
// (sorted), the attempts of the retried job, the parent's result, the job counts, the sum
// of the values the N jobs returned, and the completions QueueEvents saw.
// Usage: node cluster_bullmq.js PORT redis|cluster N
//   redis: a connection's options (new Redis); cluster: a Redis.Cluster seeded with PORT
const { FlowProducer, Queue, QueueEvents, Worker } = require("bullmq");
const Redis = require("ioredis");

const [port, client, n] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const host = "127.0.0.1";
const prefix = "{bull}";
const name = "emails";
// The delayed job, the retried job and the flow's three jobs.
const extra = 1 + 1 + 3;

function connection() {
  if (client === "cluster") {
    return new Redis.Cluster([{ host, port }], { redisOptions: { maxRetriesPerRequest: null } });
  }
  return { host, port, maxRetriesPerRequest: null };
}

// Counts events (`bump`); `reached` resolves once `target` were counted.
function counter(target) {
  let seen = 0;
  let done;
  const reached = new Promise((resolve) => { done = resolve; });
  return { reached, bump: () => { seen += 1; if (seen >= target) done(); }, seen: () => seen };
}

(async () => {
  const errors = [];
  const queue = new Queue(name, { connection: connection(), prefix });
  queue.on("error", (e) => errors.push(`queue: ${e}`));
  const events = new QueueEvents(name, { connection: connection(), prefix });
  events.on("error", (e) => errors.push(`events: ${e}`));
  await events.waitUntilReady();
  const announced = counter(n + extra);
  events.on("completed", announced.bump);
  const half = Math.floor(n / 2);
  for (let i = 0; i < half; i++) {
    await queue.add("send", { i });
  }
  await queue.addBulk(
    Array.from({ length: n - half }, (_, k) => ({ name: "send", data: { i: half + k } })),
  );
  await queue.add("delayed", {}, { delay: 200 });
  await queue.add("retried", {}, { attempts: 3, backoff: { type: "fixed", delay: 100 } });
  const flows = new FlowProducer({ connection: connection(), prefix });
  await flows.add({
    name: "parent",
    queueName: name,
    children: [1, 2].map((c) => ({ name: "child", queueName: name, data: { c } })),
  });
  const processed = [];
  let attempts = 0;
  let parent = null;
  const completed = counter(n + extra);
  const timer = setTimeout(() => {
    errors.push(`timed out with ${completed.seen()} of ${n + extra} completed`);
    process.stdout.write(JSON.stringify({ errors }) + "\n");
    process.exit(1);
  }, 60000);
  const worker = new Worker(name, async (job) => {
    switch (job.name) {
      case "send":
        processed.push(job.data.i);
        return job.data.i * 2;
      case "retried":
        attempts += 1;
        if (attempts < 3) throw new Error(`attempt ${attempts} fails`);
        return attempts;
      case "parent":
        parent = Object.values(await job.getChildrenValues()).sort();
        return parent;
      case "child":
        return job.data.c * 10;
      default:
        return null;
    }
  }, { connection: connection(), prefix, concurrency: 8 });
  worker.on("error", (e) => errors.push(`worker: ${e}`));
  worker.on("failed", (job, e) => {
    if (job.name !== "retried") errors.push(`job ${job.id} failed: ${e}`);
  });
  worker.on("completed", completed.bump);
  await completed.reached;
  await announced.reached;
  clearTimeout(timer);
  await worker.close();
  const counts = await queue.getJobCounts();
  const sent = (await queue.getCompleted(0, -1)).filter((job) => job.name === "send");
  const returned = sent.reduce((sum, job) => sum + job.returnvalue, 0);
  await Promise.all([flows.close(), events.close(), queue.close()]);
  console.log(JSON.stringify({
    errors,
    processed: processed.sort((a, b) => a - b),
    attempts,
    parent,
    counts,
    returned,
    announced: announced.seen(),
  }));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
