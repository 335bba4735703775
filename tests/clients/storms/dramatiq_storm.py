"""A retry storm from Dramatiq (its Redis broker) through the proxy: client A sends the same
message 100 times, interleaved with 100 distinct ones; client B (another client name) sends
it 3 times. Prints what the clients saw and what Redis holds, read directly (the queue and
the message hash, so a message left without its queue entry counts), as JSON.

Usage: python3 dramatiq_storm.py <proxy port> <redis port>"""
import json
import sys

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

proxy_port, redis_port = int(sys.argv[1]), int(sys.argv[2])


def broker(name):
    return RedisBroker(host="127.0.0.1", port=proxy_port, client_name=name)


a, b = broker("storm-a"), broker("storm-b")
errors = []


def actor_on(br):
    @dramatiq.actor(broker=br, actor_name="send", queue_name="emails")
    def send(to, kind="sync"):
        pass

    return send


send_a, send_b = actor_on(a), actor_on(b)


def send(actor, *args):
    try:
        actor.send(*args)
    except Exception as e:  # counted, not raised: the test asserts there are none
        errors.append(str(e.__cause__ or e))


for i in range(100):
    send(send_a, "a@example.com")
    send(send_a, f"user{i}@example.com", "distinct")
for _ in range(3):
    send(send_b, "a@example.com")

direct = redis.Redis(port=redis_port)
queued = direct.lrange("dramatiq:emails", 0, -1)
stored = [json.loads(m) for m in direct.hvals("dramatiq:emails.msgs")]
print(
    json.dumps(
        {
            "errors": errors,
            "queued": len(queued),
            "stored": len(stored),
            "same_job": sum(1 for m in stored if m["args"] == ["a@example.com"]),
            "distinct": sum(1 for m in stored if m["args"][1:] == ["distinct"]),
        }
    )
)
