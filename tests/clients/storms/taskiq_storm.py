"""A retry storm from taskiq (taskiq-redis's ListQueueBroker), which has no preset: the
generic preset reads its JSON. Client A sends the same task 1,000 times, interleaved with
100 distinct ones; client B (another client name) sends it 3 times. Prints what the clients
saw and what Redis holds, read directly, as JSON.

Usage: python3 taskiq_storm.py <proxy port> <redis port>"""
import asyncio
import json
import sys

import redis
from taskiq_redis import ListQueueBroker

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])


async def main():
    def broker(name):
        return ListQueueBroker(f"redis://127.0.0.1:{proxy_port}", client_name=name)

    a, b = broker("storm-a"), broker("storm-b")

    @a.task(task_name="storm.add")
    async def add_a(x, kind):
        return x

    @b.task(task_name="storm.add")
    async def add_b(x, kind):
        return x

    await a.startup()
    await b.startup()
    errors = []

    async def send(task, *args):
        try:
            await task.kiq(*args)
        except Exception as e:  # counted, not raised: the test asserts there are none
            errors.append(repr(e))

    for i in range(1000):
        await send(add_a, 42, "sync")
        if i % 10 == 0:
            await send(add_a, i, "distinct")
    for _ in range(3):
        await send(add_b, 42, "sync")
    await a.shutdown()
    await b.shutdown()

    direct = redis.Redis(port=redis_port)
    messages = [json.loads(m) for m in direct.lrange("taskiq", 0, -1)]
    print(
        json.dumps(
            {
                "errors": errors,
                "queued": len(messages),
                "same_job": sum(1 for m in messages if m["args"] == [42, "sync"]),
                "distinct": sum(1 for m in messages if m["args"][1:] == ["distinct"]),
            }
        )
    )


asyncio.run(main())
