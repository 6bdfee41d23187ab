import ember


def consumer(q):
    return q.get()          # nobody ever puts anything: this waits forever


q = ember.Queue(name="jobs")
p = ember.Process(target=consumer, args=(q,), name="consumer")
p.start()
print("started; now run `ember ps` in another shell", flush=True)
p.join()
