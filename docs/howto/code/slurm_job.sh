#!/bin/bash
#SBATCH --nodes=3
ember run one_per_node.py "$SLURM_JOB_NUM_NODES"
