"""redis-py through respguard: pipelines, transactions, pub/sub and blocking pops, with the
sync and asyncio clients, in RESP2 and RESP3. Exits non-zero on the first failure.

Usage: python3 redis_py_scenario.py PROXY_PORT PROTOCOL
"""
import asyncio
import sys
import threading

import redis
import redis.asyncio as aredis

port, protocol = int(sys.argv[1]), int(sys.argv[2])


def sync_scenario():
    r = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    r.flushdb()
    assert r.ping()
    # A pipeline of 1,000 commands, with an error in the middle that must not shift replies.
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"k{i}", i)
        pipe.incr("counter")
    pipe.lpush("k5", "x")  # WRONGTYPE
    pipe.get("k999")
    results = pipe.execute(raise_on_error=False)
    assert results[:4] == [True, 1, True, 2], results[:4]
    assert isinstance(results[-2], redis.ResponseError), results[-2]
    assert results[-1] == "999", results[-1]
    # A transaction with WATCH, and one aborted by another client's write.
    with r.pipeline() as p:
        p.watch("balance")
        p.multi()
        p.incrby("balance", 10)
        p.get("balance")
        assert p.execute() == [10, "10"]
    with r.pipeline() as p:
        p.watch("balance")
        redis.Redis(port=port, protocol=protocol).set("balance", 0)
        p.multi()
        p.incrby("balance", 10)
        try:
            p.execute()
            raise AssertionError("the WATCH abort did not happen")
        except redis.WatchError:
            pass
    # Pub/sub with a message arriving from another connection.
    ps = r.pubsub()
    ps.subscribe("news")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    r.publish("news", "hello")
    msg = ps.get_message(timeout=5)
    assert msg["type"] == "message" and msg["data"] == "hello", msg
    ps.psubscribe("n*")
    assert ps.get_message(timeout=5)["type"] == "psubscribe"
    ps.close()
    # A blocking pop served by a push from another thread.
    def push_later():
        redis.Redis(port=port, protocol=protocol).rpush("jobs", "job-1")
    threading.Timer(0.2, push_later).start()
    assert list(r.blpop(["jobs"], timeout=10)) == ["jobs", "job-1"]
    assert r.blpop(["nothing"], timeout=0.1) is None
    # Hashes, sorted sets, scripts.
    r.hset("h", mapping={"a": "1", "b": "2"})
    assert r.hgetall("h") == {"a": "1", "b": "2"}
    r.zadd("z", {"x": 1.5})
    assert r.zscore("z", "x") == 1.5
    script = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script(keys=["s"], args=[5]) == 5
    assert script(keys=["s"], args=[5]) == 10
    r.client_setname("scenario")
    assert r.client_getname() == "scenario"


async def async_scenario():
    r = aredis.Redis(port=port, protocol=protocol, decode_responses=True)
    async with r.pipeline(transaction=True) as p:
        p.set("a", "1")
        p.incr("a")
        p.get("a")
        assert await p.execute() == [True, 2, "2"]
    ps = r.pubsub()
    await ps.subscribe("chan")
    assert (await ps.get_message(timeout=5))["type"] == "subscribe"
    await r.publish("chan", "payload")
    msg = await ps.get_message(timeout=5)
    assert msg["data"] == "payload", msg
    await ps.aclose()

    async def push_later():
        await asyncio.sleep(0.2)
        await aredis.Redis(port=port, protocol=protocol).lpush("aq", "v")

    pusher = asyncio.create_task(push_later())
    assert list(await r.brpop(["aq"], timeout=10)) == ["aq", "v"]
    await pusher
    results = await asyncio.gather(*(r.incr("concurrent") for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    await r.aclose()


sync_scenario()
asyncio.run(async_scenario())
print(f"redis-py {redis.__version__} RESP{protocol}: sync and asyncio scenarios passed")
