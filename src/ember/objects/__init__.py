"""The Python layer of ember (multiprocessing's names): queues
(:mod:`.queues`), pipes and ``wait`` (:mod:`.connection`), named
synchronization objects (:mod:`.sync`), names and lifetimes
(:mod:`.naming`).  Re-exported lazily by ``ember``."""
