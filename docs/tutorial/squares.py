import ember


def worker(jobs, results):
    for x in iter(jobs.get, None):      # None: no more jobs
        results.put((x, x * x))


if __name__ == "__main__":
    jobs, results = ember.Queue(), ember.Queue()
    workers = [ember.Process(target=worker, args=(jobs, results)) for _ in range(3)]
    for w in workers:
        w.start()
    for x in range(100):
        jobs.put(x)
    for _ in workers:
        jobs.put(None)
    squares = dict(results.get(timeout=60) for _ in range(100))
    for w in workers:
        w.join()
    print(len(squares), "results; 9 squared is", squares[9])
    print("sum of squares:", sum(squares.values()))
