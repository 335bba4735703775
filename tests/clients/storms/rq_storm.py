"""A retry storm from RQ through the proxy: client A enqueues the same job 1,000 times,
interleaved with 100 distinct jobs; client B (another client name) enqueues it 3 times.
Prints what the clients saw and what Redis holds, read directly, as JSON: the queue, and
every job hash (a dropped job must leave none behind).

Usage: python3 rq_storm.py <proxy port> <redis port>"""
import json
import sys

import redis
from rq import Queue

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])
a = Queue("default", connection=redis.Redis(port=proxy_port, client_name="storm-a"))
b = Queue("default", connection=redis.Redis(port=proxy_port, client_name="storm-b"))
errors = []


def enqueue(q, *args):
    try:
        q.enqueue("os.path.join", *args)
    except Exception as e:  # counted, not raised: the test asserts there are none
        errors.append(repr(e))


for i in range(1000):
    enqueue(a, "42", "sync")
    if i % 10 == 0:
        enqueue(a, str(i), "distinct")
for _ in range(3):
    enqueue(b, "42", "sync")

direct = redis.Redis(port=redis_port, decode_responses=True)
ids = direct.lrange("rq:queue:default", 0, -1)
descriptions = [direct.hget(f"rq:job:{i}", "description") for i in ids]
print(
    json.dumps(
        {
            "errors": errors,
            "queued": len(ids),
            "same_job": descriptions.count("os.path.join('42', 'sync')"),
            "distinct": sum(1 for d in descriptions if d and "'distinct'" in d),
            "job_hashes": len(direct.keys("rq:job:*")),
        }
    )
)
