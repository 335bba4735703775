"""RQ's producer or worker through the proxy, for the drain test: `produce` enqueues N
distinct jobs; `work` runs an RQ worker (in this process, in burst mode: it stops when the
queue is empty) and reports the job numbers it processed. Prints what the client saw as
JSON: errors raised, and for `work` the job numbers processed.

Usage: python3 rq_drain.py <proxy port> produce|work <N>"""
import json
import logging
import sys

import redis
from rq import Queue, SimpleWorker

import rq_drain_jobs

port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
connection = redis.Redis(host="127.0.0.1", port=port)
queue = Queue("emails", connection=connection)
logging.disable(logging.INFO)  # the worker's progress lines
errors = []
if mode == "produce":
    for i in range(n):
        try:
            queue.enqueue(rq_drain_jobs.handle, i)
        except Exception as e:  # reported, not raised
            errors.append(str(e))
    print(json.dumps({"errors": errors}))
else:
    worker = SimpleWorker([queue], connection=connection)
    try:
        worker.work(burst=True, with_scheduler=False)
    except Exception as e:
        errors.append(str(e))
    failed = queue.failed_job_registry.get_job_ids()
    if failed:
        errors.append(f"failed jobs: {failed}")
    print(json.dumps({"errors": errors, "processed": sorted(rq_drain_jobs.PROCESSED)}))
