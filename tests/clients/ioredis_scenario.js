// ioredis through respguard: pipelines, transactions, pub/sub and blocking pops.
// Exits non-zero on the first failure. Usage: node ioredis_scenario.js PROXY_PORT
const assert = require("node:assert/strict");
const Redis = require("ioredis");

const port = Number(process.argv[2]);

async function main() {
  const r = new Redis({ port, maxRetriesPerRequest: 0 });
  await r.flushdb();
  assert.equal(await r.ping(), "PONG");

  const pipe = r.pipeline();
  for (let i = 0; i < 1000; i++) pipe.set(`k${i}`, i).incr("counter");
  pipe.lpush("k5", "x");
  pipe.get("k999");
  const results = await pipe.exec();
  assert.deepEqual(results.slice(0, 2), [[null, "OK"], [null, 1]]);
  assert.match(String(results[results.length - 2][0]), /WRONGTYPE/);
  assert.deepEqual(results[results.length - 1], [null, "999"]);

  const tx = await r.multi().set("a", "1").incr("a").get("a").exec();
  assert.deepEqual(tx, [[null, "OK"], [null, 2], [null, "2"]]);

  const sub = new Redis({ port });
  const got = new Promise((resolve) => sub.on("message", (ch, msg) => resolve([ch, msg])));
  await sub.subscribe("news");
  await r.publish("news", "hello");
  assert.deepEqual(await got, ["news", "hello"]);
  await sub.quit();

  const blocked = r.duplicate();
  const popped = blocked.blpop("jobs", 10);
  const pusher = new Redis({ port });
  setTimeout(() => pusher.rpush("jobs", "job-1").then(() => pusher.quit()), 200);
  assert.deepEqual(await popped, ["jobs", "job-1"]);
  blocked.disconnect();

  assert.equal(await r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "s", 5), 5);
  await r.quit();
  console.log(`ioredis ${require("ioredis/package.json").version}: scenario passed`);
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
