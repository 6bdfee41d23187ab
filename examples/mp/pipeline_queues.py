"""pipeline_queues.py with plain multiprocessing: the parent must make every
queue and hand it to the stages it connects (queues have no names), and an
end-of-stream marker replaces shutdown()."""
import multiprocessing as mp

DONE = None


def fetch(out, n):
    for i in range(n):
        out.put(f"https://example.org/item/{i}")
    out.put(DONE)


def parse(src, out):
    while (url := src.get()) is not DONE:
        out.put({"id": int(url.rsplit("/", 1)[1]), "url": url})
    out.put(DONE)


def store(src, result):
    total = count = 0
    while (rec := src.get()) is not DONE:
        total += rec["id"]
        count += 1
    result.put((count, total))


if __name__ == "__main__":
    n = 1000
    urls, records, result = mp.Queue(), mp.Queue(), mp.Queue()
    stages = [mp.Process(target=store, args=(records, result), name="store"),
              mp.Process(target=parse, args=(urls, records), name="parse"),
              mp.Process(target=fetch, args=(urls, n), name="fetch")]
    for p in stages:
        p.start()
    count, total = result.get(timeout=60)
    for p in stages:
        p.join()
    print(f"stored {count} records, id sum {total} (expected {n * (n - 1) // 2})")
    print("exit codes:", [p.exitcode for p in stages])
