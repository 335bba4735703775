// ioredis in front of a Redis Cluster behind respguard: the scenarios print what the
// client saw (a transcript), so a test can compare a run through the proxy with a run
// against a standalone Redis. Exits non-zero on an unexpected exception.
//
// Usage: node cluster_ioredis.js PORT CLIENT SCENARIO
//   CLIENT    redis (new Redis) or cluster (new Redis.Cluster)
//   SCENARIO  app (an application's commands: pipelines, transactions on hash-tagged
//             keys, pub/sub, scripts, blocking pops, multi-key commands across slots;
//             CLIENT redis only) or keys (what a cluster-aware client does: single keys,
//             MGET/MSET/DEL across slots, pipelines, a transaction on one slot,
//             a script, pub/sub)
// The last line printed is JSON: {"nodes": [...], "transcript": [...]}; "nodes" are the
// nodes a cluster client discovered ("host:port", sorted), empty for new Redis.
const Redis = require("ioredis");

const [port, client, scenario] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
const host = "127.0.0.1";
const transcript = [];

// Record one step's result, errors as their message.
function seen(label, value) {
  const plainValue = (v) => (v instanceof Error ? `Error: ${v.message}` : v);
  transcript.push([label, Array.isArray(value) ? value.map((v) => (Array.isArray(v) ? v.map(plainValue) : plainValue(v))) : plainValue(value)]);
}

const plain = () => new Redis({ host, port, maxRetriesPerRequest: 0 });

async function appScenario() {
  const r = plain();
  seen("flushall", await r.flushall());
  seen("ping", await r.ping());
  // 2,001 commands over 1,001 keys (every shard) with an error in the middle that must
  // not shift the replies after it.
  const pipe = r.pipeline();
  for (let i = 0; i < 1000; i++) pipe.set(`k${i}`, i).incr("counter");
  pipe.lpush("k5", "x"); // WRONGTYPE
  pipe.get("k999");
  const results = await pipe.exec();
  seen("pipeline head", results.slice(0, 6));
  seen("pipeline tail", results.slice(-3));
  seen("pipeline length", results.length);
  // MSET and MGET, EXISTS, TOUCH, DEL and UNLINK across slots, values in key order.
  const keys = Array.from({ length: 100 }, (_, i) => `user:${i}`);
  const pairs = {};
  keys.filter((_, i) => i % 2 === 0).forEach((k) => { pairs[k] = `v-${k}`; });
  seen("mset", await r.mset(pairs));
  seen("mget", await r.mget(...keys, "user:0", "missing"));
  seen("exists", await r.exists(...keys));
  seen("touch", await r.touch(...keys));
  seen("dbsize", await r.dbsize());
  seen("keys", (await r.keys("user:*")).sort());
  const scanned = new Set();
  await new Promise((done, fail) => {
    r.scanStream({ match: "user:*", count: 30 })
      .on("data", (page) => page.forEach((k) => scanned.add(k)))
      .on("end", done)
      .on("error", fail);
  });
  seen("scan", [...scanned].sort());
  seen("del", await r.del(...keys.slice(0, 50)));
  seen("unlink", await r.unlink(...keys));
  // Transactions on hash-tagged keys: WATCH, MULTI, EXEC; one aborted by another
  // client's write; one with an error inside EXEC.
  await r.watch("{acct:1}:balance");
  seen("watched transaction", await r.multi()
    .incrby("{acct:1}:balance", 10).rpush("{acct:1}:log", "credit 10").get("{acct:1}:balance")
    .exec());
  await r.watch("{acct:1}:balance");
  const other = plain();
  await other.set("{acct:1}:balance", 0);
  seen("aborted transaction", await r.multi().incrby("{acct:1}:balance", 10).exec());
  seen("transaction with an error", await r.multi()
    .set("{acct:2}:a", "1").incr("{acct:2}:a").lpush("{acct:2}:a", "x").get("{acct:2}:a")
    .exec());
  seen("after transactions", await r.mget("{acct:1}:balance", "{acct:1}:log", "{acct:2}:a"));
  // Scripts: a defined command (EVALSHA, then EVAL on NOSCRIPT), SCRIPT LOAD and EVALSHA,
  // SCRIPT EXISTS.
  r.defineCommand("incrBy5", { numberOfKeys: 1, lua: "return redis.call('INCRBY', KEYS[1], ARGV[1])" });
  seen("script 1", await r.incrBy5("{s}:n", 5));
  seen("script 2", await r.incrBy5("{s}:n", 5));
  seen("eval on two tagged keys", await r.eval(
    "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('MGET', KEYS[1], KEYS[2])",
    2, "{s}:a", "{s}:b", "x"));
  const sha = await r.script("LOAD", "return {ARGV[1], ARGV[2]}");
  seen("script load", sha);
  seen("evalsha", await r.evalsha(sha, 0, "one", "two"));
  seen("script exists", await r.script("EXISTS", sha, "0".repeat(40)));
  // Hashes, sorted sets, counters.
  seen("hset", await r.hset("h", { a: "1", b: "2" }));
  seen("hgetall", await r.hgetall("h"));
  seen("zadd", await r.zadd("z", 1.5, "x", 2, "y"));
  seen("zrange", await r.zrange("z", 0, -1, "WITHSCORES"));
  seen("incrbyfloat", await r.incrbyfloat("f", 0.5));
  // A blocking pop served by a push from another connection; one that times out.
  const blocked = r.duplicate();
  const popped = blocked.blpop("jobs", 10);
  setTimeout(() => other.rpush("jobs", "job-1"), 200);
  seen("blpop", await popped);
  seen("blpop timeout", await blocked.blpop("nothing", 0.1));
  blocked.disconnect();
  // Pub/sub: a message from another connection, a pattern, unsubscribing.
  const sub = plain();
  const messages = [];
  let awaited = { count: 0, done: () => {} };
  const received = (count) => new Promise((done) => {
    awaited = { count, done };
    if (messages.length >= count) done();
  });
  const note = (m) => { messages.push(m); if (messages.length >= awaited.count) awaited.done(); };
  sub.on("message", (ch, msg) => note(["message", ch, msg]));
  sub.on("pmessage", (pat, ch, msg) => note(["pmessage", pat, ch, msg]));
  seen("subscribe", await sub.subscribe("news"));
  await r.publish("news", "hello");
  await received(1);
  seen("psubscribe", await sub.psubscribe("n*"));
  await r.publish("news", "again");
  await received(3);
  seen("messages", messages.map((m) => JSON.stringify(m)).sort());
  seen("unsubscribe", await sub.unsubscribe("news"));
  sub.disconnect();
  await r.client("SETNAME", "scenario");
  seen("client name", await r.client("GETNAME"));
  seen("dbsize at the end", await r.dbsize());
  other.disconnect();
  r.disconnect();
}

// What a cluster-aware client does; `r` is a Redis or a Redis.Cluster.
async function keysScenario(r) {
  seen("flushall", await r.flushall());
  for (let i = 0; i < 200; i++) await r.set(`key:${i}`, `value-${i}`);
  const some = [];
  for (let i = 0; i < 200; i += 7) some.push(await r.get(`key:${i}`));
  seen("get", some);
  const all = Array.from({ length: 200 }, (_, i) => `key:${i}`);
  seen("mget across slots", await r.mget(...all, "missing"));
  const mapping = {};
  for (let i = 0; i < 100; i++) mapping[`other:${i}`] = String(i);
  seen("mset across slots", await r.mset(mapping));
  seen("mget of mset", await r.mget(...Object.keys(mapping)));
  seen("exists across slots", await r.exists(...all.filter((_, i) => i % 3 === 0)));
  seen("del across slots", await r.del(...all.filter((_, i) => i % 2 === 0)));
  const pipe = r.pipeline();
  for (let i = 0; i < 300; i++) pipe.set(`p:${i}`, i).incr(`p:${i}`).get(`p:${i}`);
  pipe.lpush("p:0", "x"); // WRONGTYPE
  pipe.get("p:299");
  const results = await pipe.exec();
  seen("pipeline", results.slice(0, 9).concat(results.slice(-2)));
  seen("pipeline length", results.length);
  seen("transaction on one slot", await r.multi()
    .set("{order:7}:state", "paid").rpush("{order:7}:events", "created", "paid")
    .lrange("{order:7}:events", 0, -1)
    .exec());
  r.defineCommand("incrBy5", { numberOfKeys: 1, lua: "return redis.call('INCRBY', KEYS[1], ARGV[1])" });
  seen("script", [await r.incrBy5("script:n", 5), await r.incrBy5("script:n", 5)]);
  const sub = r.duplicate();
  const message = new Promise((done) => sub.on("message", (ch, msg) => done([ch, msg])));
  seen("subscribe", await sub.subscribe("news"));
  await r.publish("news", "hello");
  seen("message", await message);
  sub.disconnect();
  seen("dbsize", await r.dbsize());
}

async function main() {
  let nodes = [];
  if (scenario === "app") {
    if (client !== "redis") throw new Error("the app scenario runs with new Redis only");
    await appScenario();
  } else if (client === "cluster") {
    const r = new Redis.Cluster([{ host, port }], { redisOptions: { maxRetriesPerRequest: 0 } });
    await new Promise((done, fail) => { r.once("ready", done); r.once("error", fail); });
    nodes = r.nodes("all").map((n) => `${n.options.host}:${n.options.port}`).sort();
    await keysScenario(r);
    r.disconnect();
  } else {
    const r = plain();
    await keysScenario(r);
    r.disconnect();
  }
  console.log(`ioredis ${require("ioredis/package.json").version} ${client} ${scenario}: done`);
  console.log(JSON.stringify({ nodes, transcript }));
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
