"""redis-py in front of a Redis Cluster behind respguard: the scenarios print what the
client saw (a transcript), so a test can compare a run through the proxy with a run
against a standalone Redis. Exits non-zero on an unexpected exception.

Usage: python3 cluster_redis_py.py PORT CLIENT PROTOCOL SCENARIO
  CLIENT    redis (redis.Redis) or cluster (redis.cluster.RedisCluster)
  SCENARIO  app (an application's commands: pipelines, transactions on hash-tagged
            keys, pub/sub, scripts, blocking pops, multi-key commands across slots;
            CLIENT redis only) or keys (what a cluster-aware client does: single keys,
            MGET/MSET/DEL across slots, pipelines, a transaction on one slot, a
            script, pub/sub)
The last line printed is JSON: {"nodes": [...], "transcript": [...]}; "nodes" are the
nodes a cluster client discovered ("host:port", sorted), empty for redis.Redis.
"""
import asyncio
import json
import sys
import threading

import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster

port, client, protocol, scenario = (
    int(sys.argv[1]),
    sys.argv[2],
    int(sys.argv[3]),
    sys.argv[4],
)
HOST = "127.0.0.1"
transcript = []


def seen(label, value):
    """Record one step's result, errors as their class and message."""
    if isinstance(value, Exception):
        value = f"{type(value).__name__}: {value}"
    elif isinstance(value, (list, tuple)):
        value = [f"{type(v).__name__}: {v}" if isinstance(v, Exception) else v for v in value]
    elif isinstance(value, (set, frozenset)):
        value = sorted(value)
    transcript.append([label, value])


def plain():
    return redis.Redis(host=HOST, port=port, protocol=protocol, decode_responses=True)


def app_scenario():
    r = plain()
    seen("flushall", r.flushall())
    seen("ping", r.ping())
    # 2,001 commands over 1,001 keys (every shard) with an error in the middle that must
    # not shift the replies after it.
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"k{i}", i)
        pipe.incr("counter")
    pipe.lpush("k5", "x")  # WRONGTYPE
    pipe.get("k999")
    results = pipe.execute(raise_on_error=False)
    seen("pipeline head", results[:6])
    seen("pipeline tail", results[-3:])
    seen("pipeline length", len(results))
    # MSET and MGET, EXISTS, TOUCH, DEL and UNLINK across slots, values in key order.
    keys = [f"user:{i}" for i in range(100)]
    seen("mset", r.mset({k: f"v-{k}" for k in keys[::2]}))
    seen("mget", r.mget(keys + ["user:0", "missing"]))
    seen("exists", r.exists(*keys))
    seen("touch", r.touch(*keys))
    seen("dbsize", r.dbsize())
    seen("keys", sorted(r.keys("user:*")))
    seen("scan", sorted(set(r.scan_iter(match="user:*", count=30))))
    seen("delete", r.delete(*keys[:50]))
    seen("unlink", r.unlink(*keys))
    # Transactions on hash-tagged keys: WATCH, MULTI, EXEC; one aborted by another
    # client's write; one discarded.
    with r.pipeline() as p:
        p.watch("{acct:1}:balance")
        p.multi()
        p.incrby("{acct:1}:balance", 10)
        p.rpush("{acct:1}:log", "credit 10")
        p.get("{acct:1}:balance")
        seen("watched transaction", p.execute())
    with r.pipeline() as p:
        p.watch("{acct:1}:balance")
        plain().set("{acct:1}:balance", 0)
        p.multi()
        p.incrby("{acct:1}:balance", 10)
        try:
            p.execute()
            seen("aborted transaction", "executed")
        except redis.WatchError as e:
            seen("aborted transaction", e)
    with r.pipeline(transaction=True) as p:
        p.set("{acct:2}:a", "1")
        p.incr("{acct:2}:a")
        p.lpush("{acct:2}:a", "x")  # WRONGTYPE inside EXEC
        p.get("{acct:2}:a")
        seen("transaction with an error", p.execute(raise_on_error=False))
    seen("after transactions", r.mget("{acct:1}:balance", "{acct:1}:log", "{acct:2}:a"))
    # Scripts: EVAL through register_script (EVALSHA, then EVAL on NOSCRIPT), SCRIPT LOAD
    # and EVALSHA, SCRIPT EXISTS.
    incr_by = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    seen("script 1", incr_by(keys=["{s}:n"], args=[5]))
    seen("script 2", incr_by(keys=["{s}:n"], args=[5]))
    both = r.register_script(
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('MGET', KEYS[1], KEYS[2])"
    )
    seen("script on two tagged keys", both(keys=["{s}:a", "{s}:b"], args=["x"]))
    sha = r.script_load("return {ARGV[1], ARGV[2]}")
    seen("script load", sha)
    seen("evalsha", r.evalsha(sha, 0, "one", "two"))
    seen("script exists", r.script_exists(sha, "0" * 40))
    # Hashes, sorted sets, lists, counters.
    seen("hset", r.hset("h", mapping={"a": "1", "b": "2"}))
    seen("hgetall", r.hgetall("h"))
    seen("zadd", r.zadd("z", {"x": 1.5, "y": 2}))
    seen("zrange", r.zrange("z", 0, -1, withscores=True))
    seen("incrbyfloat", r.incrbyfloat("f", 0.5))
    # A blocking pop served by a push from another thread; one that times out.
    def push_later():
        plain().rpush("jobs", "job-1")

    threading.Timer(0.2, push_later).start()
    seen("blpop", r.blpop(["jobs"], timeout=10))
    seen("blpop timeout", r.blpop(["nothing"], timeout=0.1))
    # Pub/sub: a message from another connection, a pattern, unsubscribing.
    ps = r.pubsub()
    ps.subscribe("news")
    seen("subscribe", ps.get_message(timeout=5))
    r.publish("news", "hello")
    seen("message", ps.get_message(timeout=5))
    ps.psubscribe("n*")
    seen("psubscribe", ps.get_message(timeout=5))
    r.publish("news", "again")
    seen("two deliveries", sorted(json.dumps(ps.get_message(timeout=5)) for _ in range(2)))
    ps.unsubscribe("news")
    seen("unsubscribe", ps.get_message(timeout=5))
    ps.close()
    r.client_setname("scenario")
    seen("client name", r.client_getname())
    seen("dbsize at the end", r.dbsize())
    asyncio.run(async_app_scenario())


async def async_app_scenario():
    r = aredis.Redis(host=HOST, port=port, protocol=protocol, decode_responses=True)
    async with r.pipeline(transaction=True) as p:
        p.set("{a}:x", "1")
        p.incr("{a}:x")
        p.get("{a}:x")
        seen("async transaction", await p.execute())
    ps = r.pubsub()
    await ps.subscribe("chan")
    seen("async subscribe", await ps.get_message(timeout=5))
    await r.publish("chan", "payload")
    seen("async message", await ps.get_message(timeout=5))
    await ps.aclose()
    results = await asyncio.gather(*(r.incr(f"concurrent:{i % 7}") for i in range(70)))
    seen("concurrent increments", sorted(results))
    seen("mget after concurrency", await r.mget([f"concurrent:{i}" for i in range(7)]))
    await r.aclose()


def keys_scenario(r):
    """What a cluster-aware client does; `r` is a redis.Redis or a RedisCluster."""
    mget = getattr(r, "mget_nonatomic", r.mget)
    # A cluster client answers FLUSHALL with each node's reply.
    flushed = r.flushall()
    seen("flushall", all(flushed.values()) if isinstance(flushed, dict) else flushed)
    for i in range(200):
        r.set(f"key:{i}", f"value-{i}")
    seen("get", [r.get(f"key:{i}") for i in range(0, 200, 7)])
    seen("mget across slots", mget([f"key:{i}" for i in range(200)] + ["missing"]))
    mapping = {f"other:{i}": str(i) for i in range(100)}
    if hasattr(r, "mset_nonatomic"):
        seen("mset across slots", all(r.mset_nonatomic(mapping)))
    else:
        seen("mset across slots", r.mset(mapping))
    seen("mget of mset", mget(list(mapping)))
    seen("exists across slots", r.exists(*[f"key:{i}" for i in range(0, 200, 3)]))
    seen("delete across slots", r.delete(*[f"key:{i}" for i in range(0, 200, 2)]))
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"p:{i}", i)
        pipe.incr(f"p:{i}")
        pipe.get(f"p:{i}")
    pipe.lpush("p:0", "x")  # WRONGTYPE
    pipe.get("p:299")
    results = pipe.execute(raise_on_error=False)
    seen("pipeline", results[:9] + results[-2:])
    seen("pipeline length", len(results))
    with r.pipeline(transaction=True) as p:
        p.set("{order:7}:state", "paid")
        p.rpush("{order:7}:events", "created", "paid")
        p.lrange("{order:7}:events", 0, -1)
        results = p.execute()
        # A cluster client's transaction leaves SET's reply as it came ("OK").
        results[0] = results[0] in (True, "OK")
        seen("transaction on one slot", results)
    incr_by = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    seen("script", [incr_by(keys=["script:n"], args=[5]) for _ in range(2)])
    ps = r.pubsub()
    ps.subscribe("news")
    seen("subscribe", ps.get_message(timeout=5))
    r.publish("news", "hello")
    seen("message", ps.get_message(timeout=5))
    ps.close()
    seen("keys left", r.exists(*[f"key:{i}" for i in range(200)], *mapping, "{order:7}:state"))


def cluster_client():
    return RedisCluster(host=HOST, port=port, protocol=protocol, decode_responses=True)


def main():
    nodes = []
    if scenario == "app":
        assert client == "redis", "the app scenario runs with redis.Redis only"
        app_scenario()
    elif client == "cluster":
        r = cluster_client()
        nodes = sorted(n.name for n in r.get_nodes())
        keys_scenario(r)
        r.close()
    else:
        r = plain()
        keys_scenario(r)
        r.close()
    print(f"redis-py {redis.__version__} RESP{protocol} {client} {scenario}: done")
    print(json.dumps({"nodes": nodes, "transcript": transcript}))


main()
