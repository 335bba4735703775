"""Huey enqueues through the proxy: the same task call 100 times (each a Message with a fresh
id), then 100 distinct calls, all to the queue `huey.redis.payloads`. Prints the errors
raised as JSON; the test reads what Redis holds directly.

Usage: python3 huey_jobs.py <proxy port>"""
import json
import sys

from huey import RedisHuey

huey = RedisHuey("payloads", host="127.0.0.1", port=int(sys.argv[1]), blocking=False)


@huey.task()
def add(a, b):
    return a + b


errors = []
for i in range(100):
    for a, b in ((1, 2), (i, 1000)):
        try:
            add(a, b)
        except Exception as e:  # noqa: BLE001 - the test reports whatever Huey raised
            errors.append(repr(e))
print(json.dumps({"errors": errors}))
