"""The job `rq_drain.py` enqueues: records its number in the worker's process."""
PROCESSED = []


def handle(i):
    PROCESSED.append(i)
    return i
