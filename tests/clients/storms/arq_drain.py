"""arq's producer or worker through the proxy, for the drain test: `produce` enqueues N
distinct jobs; `work` runs an arq worker (in this process, in burst mode: it stops when the
queue is empty) and reports the job numbers it processed. Prints what the client saw as
JSON: errors raised, and for `work` the job numbers processed.

Usage: tests/clients/arq-venv/bin/python arq_drain.py <proxy port> produce|work <N>"""
import asyncio
import json
import logging
import sys

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker

port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
settings = RedisSettings(host="127.0.0.1", port=port)
logging.disable(logging.INFO)  # the worker's progress lines
processed = []


async def handle(ctx, number):
    processed.append(number)
    return number


async def produce(errors):
    pool = await create_pool(settings)
    for i in range(n):
        try:
            await pool.enqueue_job("handle", i)
        except Exception as e:  # reported, not raised
            errors.append(str(e))
    await pool.aclose()
    return {"errors": errors}


async def work(errors):
    worker = Worker(
        functions=[handle],
        redis_settings=settings,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        max_tries=1,
    )
    try:
        await worker.async_run()
    except Exception as e:
        errors.append(repr(e))
    finally:
        await worker.close()
    if worker.jobs_failed:
        errors.append(f"{worker.jobs_failed} jobs failed")
    return {"errors": errors, "processed": sorted(processed)}


report = asyncio.run(produce([]) if mode == "produce" else work([]))
print(json.dumps(report))
