"""Celery (Redis broker and result backend) through the proxy under a catch-all TTL rule:
tasks sent, then run by an in-process worker (solo pool), their results read. Prints what
the client saw and, read directly from Redis, the PTTL of the queue while the tasks wait
and of each result key (Celery expires results itself, after `result_expires`), as JSON.

Usage: python3 celery_catch_all.py <proxy port> <redis port>"""
import json
import sys

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

proxy_port, redis_port = sys.argv[1], int(sys.argv[2])
url = f"redis://127.0.0.1:{proxy_port}/0"
app = Celery("ttl", broker=url, backend=url)
app.conf.broker_connection_retry_on_startup = False
direct = redis.Redis(port=redis_port)


@app.task(name="ttl.add")
def add(a, b):
    return a + b


pending = [add.delay(i, i) for i in range(10)]
queued = direct.llen("celery")
queue_pttl = direct.pttl("celery")
with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
    values = [r.get(timeout=30) for r in pending]
result_pttls = [direct.pttl(f"celery-task-meta-{r.id}") for r in pending]
print(
    json.dumps(
        {
            "errors": [],
            "queued": queued,
            "queue_pttl": queue_pttl,
            "result_pttls": result_pttls,
            "values": values,
            "want": [2 * i for i in range(10)],
            "result_expires_ms": int(app.conf.result_expires.total_seconds() * 1000),
        }
    )
)
