"""A multi-stage pipeline: stages connected by named queues.

    ember run examples/pipeline_queues.py

    fetch --"urls"--> parse --"records"--> store

Each stage opens its queues *by name* (``exist_ok=True``: the first stage
to get there creates the queue, the others find it), so the stages can
start in any order, on their own, even from different programs.  A stage
ends its output with ``shutdown()``: the next stage gets everything put
before, then ``ember.ChannelClosed`` (an ``EOFError``).
"""
import ember


def fetch(n):
    out = ember.Queue(name="urls", exist_ok=True)
    for i in range(n):
        out.put(f"https://example.org/item/{i}")
    out.shutdown()                        # end of stream for every reader


def parse():
    src = ember.Queue(name="urls", exist_ok=True)
    out = ember.Queue(name="records", exist_ok=True)
    try:
        while True:
            url = src.get()
            out.put({"id": int(url.rsplit("/", 1)[1]), "url": url})
    except ember.ChannelClosed:
        out.shutdown()


def store():
    src = ember.Queue(name="records", exist_ok=True)
    total = count = 0
    try:
        while True:
            total += src.get()["id"]
            count += 1
    except ember.ChannelClosed:
        return count, total


if __name__ == "__main__":
    n = 1000
    # Started last stage first: each waits for its input queue by name.
    stages = [ember.Process(target=store, name="store"),
              ember.Process(target=parse, name="parse"),
              ember.Process(target=fetch, args=(n,), name="fetch")]
    for p in stages:
        p.start()
    count, total = stages[0].result(timeout=60)
    for p in stages:
        p.join()
    print(f"stored {count} records, id sum {total} (expected {n * (n - 1) // 2})")
    print("exit codes:", [p.exitcode for p in stages])
    for name in ("urls", "records"):      # named queues live until destroyed
        ember.Queue.attach(name).destroy()
