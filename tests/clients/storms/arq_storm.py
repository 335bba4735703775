"""A retry storm from arq through the proxy: client A enqueues the same call 100 times
(each with arq's fresh job id and enqueue time), interleaved with 100 distinct calls;
client B (another client name) enqueues it 3 times. Then an arq worker, through the proxy
in burst mode, runs every queued job. Prints what the clients saw and what Redis holds,
read directly (the queue, the pickled job keys, so a job key left without its queue entry
counts, and the results), as JSON.

Usage: tests/clients/arq-venv/bin/python arq_storm.py <proxy port> <redis port>"""
import asyncio
import json
import logging
import pickle
import sys

import redis
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])
logging.disable(logging.INFO)  # the worker's progress lines


async def send(ctx, to, kind="sync"):
    return f"sent to {to}"


async def main():
    a = ArqRedis(host="127.0.0.1", port=proxy_port, client_name="storm-a")
    b = ArqRedis(host="127.0.0.1", port=proxy_port, client_name="storm-b")
    errors = []

    async def enqueue(client, *args):
        try:
            await client.enqueue_job("send", *args)
        except Exception as e:  # counted, not raised: the test asserts there are none
            errors.append(repr(e))

    for i in range(100):
        await enqueue(a, "a@example.com")
        await enqueue(a, f"user{i}@example.com", "distinct")
    for _ in range(3):
        await enqueue(b, "a@example.com")
    await a.aclose()
    await b.aclose()

    direct = redis.Redis(port=redis_port)
    queued = direct.zcard("arq:queue")
    jobs = [pickle.loads(direct.get(k)) for k in direct.keys("arq:job:*")]

    worker = Worker(
        functions=[send],
        redis_settings=RedisSettings(host="127.0.0.1", port=proxy_port),
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
    )
    try:
        await worker.async_run()
    except Exception as e:
        errors.append(repr(e))
    finally:
        await worker.close()
    print(
        json.dumps(
            {
                "errors": errors,
                "queued": queued,
                "stored": len(jobs),
                "same_job": sum(1 for j in jobs if tuple(j["a"]) == ("a@example.com",)),
                "distinct": sum(1 for j in jobs if tuple(j["a"][1:]) == ("distinct",)),
                "complete": worker.jobs_complete,
                "failed": worker.jobs_failed,
                "results": len(direct.keys("arq:result:*")),
            }
        )
    )


asyncio.run(main())
