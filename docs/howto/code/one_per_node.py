import sys

from ember.descriptors import ProcessOptions
from ember.globalservices import process

nodes = int(sys.argv[1])                 # e.g. $SLURM_JOB_NUM_NODES
workers = [process.create(sys.executable, ".", ["node_worker.py"],
                          options=ProcessOptions(node=n), user_name=f"worker-{n}")
           for n in range(nodes)]
anywhere = process.create(sys.executable, ".", ["node_worker.py"],
                          options=ProcessOptions(node="any"))
exited, _ = process.multi_join([w.p_uid for w in workers + [anywhere]], join_all=True,
                               timeout=120)
print("exit codes:", sorted(code for _, code in exited))
