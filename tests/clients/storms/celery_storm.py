"""A retry storm from Celery (kombu's Redis transport) through the proxy: client A sends the
same task 1,000 times, interleaved with 100 distinct ones and a retry (same task id) of one
task; client B (another client name) sends the same task 3 times. Prints what the clients
saw and what Redis holds, read directly, as JSON.

Usage: python3 celery_storm.py <proxy port> <redis port>"""
import json
import sys

import redis
from celery import Celery

proxy_port, redis_port = sys.argv[1], int(sys.argv[2])


def app(name):
    a = Celery("storm", broker=f"redis://127.0.0.1:{proxy_port}/0")
    a.conf.broker_transport_options = {"client_name": name}
    a.conf.broker_connection_retry_on_startup = False
    return a


a, b = app("storm-a"), app("storm-b")
errors = []


def send(application, args, **options):
    try:
        application.send_task("storm.add", args=args, **options)
    except Exception as e:  # counted, not raised: the test asserts there are none
        errors.append(repr(e))


for i in range(1000):
    send(a, [42, "sync"])
    if i % 10 == 0:
        send(a, [i, "distinct"])
for _ in range(2):
    send(a, [7, "retried"], task_id="fixed-task-id")
for _ in range(3):
    send(b, [42, "sync"])

direct = redis.Redis(port=redis_port)
messages = [json.loads(m) for m in direct.lrange("celery", 0, -1)]
reprs = [m["headers"]["argsrepr"] for m in messages]
print(
    json.dumps(
        {
            "errors": errors,
            "queued": len(messages),
            "same_job": reprs.count("[42, 'sync']"),
            "distinct": sum(1 for r in reprs if "'distinct'" in r),
            "repushed": sum(1 for m in messages if m["headers"]["id"] == "fixed-task-id"),
        }
    )
)
