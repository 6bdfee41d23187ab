# In a notebook cell (or IPython, or a plain script):
import ember

rt = ember.init()                     # a runtime in the background; re-running the cell is harmless
print("attached as p_uid", rt.p_uid)

# Functions and lambdas defined in the notebook work as targets:
results = ember.Queue()
p = ember.Process(target=lambda q, x: q.put(x ** 2), args=(results, 12))
p.start()
print("from the child:", results.get(timeout=60))
p.join()

ember.shutdown()                      # or restart the kernel: the same teardown
print("initialized:", ember.is_initialized())
