"""An ordinary multiprocessing program (see examples/mp_switch.py for the
same program on ember)."""
import multiprocessing as mp


def square(x):
    return x * x


def producer(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)


def count(total, n):
    for _ in range(n):
        with total.get_lock():
            total.value += 1


if __name__ == "__main__":
    with mp.Pool(4) as pool:
        print("squares:", sum(pool.map(square, range(10_000))))

    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, 1000))
    p.start()
    received = 0
    while q.get() is not None:
        received += 1
    p.join()
    print("received:", received)

    total = mp.Value("i", 0)
    ps = [mp.Process(target=count, args=(total, 500)) for _ in range(4)]
    for c in ps:
        c.start()
    for c in ps:
        c.join()
    print("counted:", total.value)
    print("start method:", mp.get_start_method())
