import multiprocessing as mp

import ember  # noqa: F401  (registers the start method "ember")


def square(x):
    return x * x


def producer(q):
    for i in range(3):
        q.put(f"item {i}")
    q.put(None)


if __name__ == "__main__":
    mp.set_start_method("ember")        # the one line that changes

    pool = mp.Pool(4)
    print("squares:", pool.map(square, range(10)))
    pool.close()
    pool.join()

    q = mp.Queue()
    p = mp.Process(target=producer, args=(q,))
    p.start()
    print("got:", list(iter(q.get, None)))
    p.join()
    print("exit code:", p.exitcode)
