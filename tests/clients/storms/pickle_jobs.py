"""Pickled jobs pushed through the proxy: 100 of the same work, each with a fresh
uuid.UUID inside the pickle (as Python libraries stamp their jobs), to `jobs:same`, and 100
distinct jobs to `jobs:distinct`. Prints the LPUSH replies' count of errors as JSON; the
test reads what Redis holds directly.

Usage: python3 pickle_jobs.py <proxy port>"""
import collections
import json
import pickle
import sys
import uuid

import redis

Job = collections.namedtuple("Job", "id task args kwargs")

proxy = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
errors = []
for i in range(100):
    for key, args in (("jobs:same", (42,)), ("jobs:distinct", (i,))):
        job = Job(uuid.uuid4(), "tasks.send", args, {"retry": True})
        try:
            proxy.lpush(key, pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        except redis.RedisError as e:
            errors.append(str(e))
print(json.dumps({"errors": errors}))
