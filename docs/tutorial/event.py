import ember


def waiter(i):
    go = ember.Event.attach("go", timeout=30)    # found by its name
    go.wait()
    return f"waiter {i} saw the event"


if __name__ == "__main__":
    go = ember.Event(name="go")
    waiters = [ember.Process(target=waiter, args=(i,)) for i in range(3)]
    for w in waiters:
        w.start()
    print("event set?", go.is_set())
    go.set()
    for w in waiters:
        print(w.result())
        w.join()
