import os

print("worker on node", os.environ["EMBER_NODE"], flush=True)
