"""Celery's producer or worker through the proxy, for the drain test: `produce` sends N
distinct tasks; `work` runs a Celery worker in this process (one thread, the `solo` pool)
until N tasks were processed (or 60 s passed). Prints what the client saw as JSON: errors
raised, and for `work` the task numbers processed.

Usage: python3 celery_drain.py <proxy port> produce|work <N>"""
import json
import sys
import threading
import time

from celery import Celery
from celery.contrib.testing.worker import start_worker

port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
app = Celery("drain", broker=f"redis://127.0.0.1:{port}/0")
app.conf.broker_connection_retry_on_startup = False
app.conf.broker_connection_max_retries = 0
app.conf.task_default_queue = "emails"
processed = []
lock = threading.Lock()


@app.task(name="drain.handle")
def handle(i):
    with lock:
        processed.append(i)


errors = []
if mode == "produce":
    for i in range(n):
        try:
            handle.apply_async((i,), retry=False)
        except Exception as e:  # reported, not raised
            errors.append(str(e))
    print(json.dumps({"errors": errors}))
else:
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      shutdown_timeout=10, loglevel="WARNING"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(processed) >= n:
                    break
            time.sleep(0.05)
    print(json.dumps({"errors": errors, "processed": sorted(processed)}))
