"""Dramatiq's producer or worker through the proxy, for the drain test: `produce` sends N
distinct messages; `work` runs a Dramatiq worker until N messages were processed (or 60 s
passed). Prints what the client saw as JSON: errors raised, and for `work` the message
numbers processed.

Usage: python3 dramatiq_drain.py <proxy port> produce|work <N>"""
import json
import sys
import threading
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
broker = RedisBroker(host="127.0.0.1", port=port)
processed = []
lock = threading.Lock()


@dramatiq.actor(broker=broker, actor_name="handle", queue_name="emails", max_retries=0)
def handle(i):
    with lock:
        processed.append(i)


errors = []
if mode == "produce":
    for i in range(n):
        try:
            handle.send(i)
        except Exception as e:  # reported, not raised
            errors.append(str(e.__cause__ or e))
    print(json.dumps({"errors": errors}))
else:
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if len(processed) >= n:
                break
        time.sleep(0.05)
    worker.stop()
    print(json.dumps({"errors": errors, "processed": sorted(processed)}))
