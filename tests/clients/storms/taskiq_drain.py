"""taskiq's (taskiq-redis's ListQueueBroker) producer or worker through the proxy, for the
drain test: `produce` sends N distinct tasks onto the `taskiq` list; `work` runs taskiq's
own receiver in this process (taskiq.api.run_receiver_task, the loop `taskiq worker` runs:
BRPOP, run the task, write its result) until N tasks were processed and their results are
readable. Results go to taskiq-redis's result backend, under the `taskiq-result:` prefix
(its keys are otherwise bare task ids, which a priority rule cannot tell from an
application's). Prints what the client saw as JSON: errors raised or logged, and for `work`
the task numbers processed and how many results read back held their task's return value.

Usage: python3 taskiq_drain.py <proxy port> produce|work <N>"""
import asyncio
import json
import logging
import sys

from taskiq import Context, TaskiqDepends
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
url = f"redis://127.0.0.1:{port}"
results = RedisAsyncResultBackend(url, prefix_str="taskiq-result", result_ex_time=3600)
broker = ListQueueBroker(url).with_result_backend(results)
processed = {}


@broker.task(task_name="drain.handle")
async def handle(i: int, context: Context = TaskiqDepends()) -> int:
    processed[context.message.task_id] = i
    return i


class Logged(logging.Handler):
    """What taskiq logs at WARNING or above: a task's error, a refused result write."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


async def wait(what, errors, done):
    """Whether `done()` came true within 60 s; an error recorded if not."""
    for _ in range(1200):
        if await done():
            return True
        await asyncio.sleep(0.05)
    errors.append(f"timed out waiting for {what}")
    return False


async def main():
    errors = []
    if mode == "produce":
        await broker.startup()
        for i in range(n):
            try:
                await handle.kiq(i)
            except Exception as e:  # reported, not raised, with what Redis answered
                errors.append(f"{e}: {e.__cause__}" if e.__cause__ else str(e))
        await broker.shutdown()
        print(json.dumps({"errors": errors}))
        return

    logged = Logged()
    logging.getLogger().addHandler(logged)
    await broker.startup()
    receiver = asyncio.create_task(run_receiver_task(broker))

    async def all_processed():
        return len(processed) >= n

    async def all_results():
        return all([await results.is_result_ready(t) for t in list(processed)])

    read = 0
    if await wait(f"{n} tasks", errors, all_processed) and await wait(
        "their results", errors, all_results
    ):
        for task_id, i in processed.items():
            result = await results.get_result(task_id)
            if result.is_err or result.return_value != i:
                errors.append(f"task {i}: {result}")
            else:
                read += 1
    # Stopped as run_receiver_task's documentation says, by cancelling it: the warning it
    # logs then is the stop, not an error.
    logging.getLogger().removeHandler(logged)
    errors.extend(logged.lines)
    receiver.cancel()
    try:
        await receiver
    except asyncio.CancelledError:
        pass
    await broker.shutdown()
    print(
        json.dumps(
            {"errors": errors, "processed": sorted(processed.values()), "results": read}
        )
    )


asyncio.run(main())
