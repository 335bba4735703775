"""RQ through the proxy under a catch-all TTL rule: jobs enqueued, then run by an
in-process worker, their results read. Prints what the client saw and, read directly from
Redis, the PTTL of RQ's queue and job hashes while the jobs wait and of the job hashes once
finished (RQ expires them itself, after `result_ttl`), as JSON.

Usage: python3 rq_catch_all.py <proxy port> <redis port>"""
import json
import sys

import redis
from rq import Queue, SimpleWorker

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])
conn = redis.Redis(port=proxy_port)
direct = redis.Redis(port=redis_port)
queue = Queue("ttl", connection=conn)
jobs = [queue.enqueue("os.path.join", "a", str(i)) for i in range(20)]
queued = direct.llen("rq:queue:ttl")
waiting_pttls = [direct.pttl("rq:queue:ttl")] + [direct.pttl(f"rq:job:{j.id}") for j in jobs]
SimpleWorker([queue], connection=conn).work(burst=True)
finished_pttls = [direct.pttl(f"rq:job:{j.id}") for j in jobs]
values = [j.return_value(refresh=True) for j in jobs]
print(
    json.dumps(
        {
            "errors": [],
            "queued": queued,
            "waiting_pttls": waiting_pttls,
            "finished_pttls": finished_pttls,
            "values": values,
            "want": [f"a/{i}" for i in range(20)],
            "result_ttl_ms": 500 * 1000,
        }
    )
)
