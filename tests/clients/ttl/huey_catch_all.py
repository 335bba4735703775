"""Huey through the proxy under a catch-all TTL rule: tasks enqueued, a lock taken, the
tasks run by an in-process consumer, their results read. Prints what the client saw and,
read directly from Redis at each step, the PTTL of Huey's queue and of its one results
hash (results, locks and revocations), as JSON. One result is left unread, in the hash.

Usage: python3 huey_catch_all.py <proxy port> <redis port>"""
import json
import sys

import redis
from huey import RedisHuey

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])
huey = RedisHuey("ttl", host="127.0.0.1", port=proxy_port, blocking=False)
direct = redis.Redis(port=redis_port)
errors = []


@huey.task()
def add(a, b):
    return a + b


pending = [add(i, i) for i in range(20)]
kept = add(50, 50)  # its result stays in the results hash, for the test to read
queue_pttl = direct.pttl("huey.redis.ttl")
queued = direct.llen("huey.redis.ttl")
with huey.lock_task("ttl-lock"):
    lock_pttl = direct.pttl("huey.results.ttl")
while True:
    task = huey.dequeue()
    if task is None:
        break
    try:
        huey.execute(task)
    except Exception as e:  # counted, not raised: the test asserts there are none
        errors.append(repr(e))
results_pttl = direct.pttl("huey.results.ttl")
stored = direct.hlen("huey.results.ttl")
values = [r.get() for r in pending]
print(
    json.dumps(
        {
            "errors": errors,
            "queued": queued,
            "kept": kept.id,
            "queue_pttl": queue_pttl,
            "lock_pttl": lock_pttl,
            "results_pttl": results_pttl,
            "stored": stored,
            "values": values,
            "want": [2 * i for i in range(20)],
        }
    )
)
