#!/bin/bash

# Parameters
#PJM -L rscgrp=share-short
#PJM -L gpu=4
#PJM -L elapse=01:30:00
#PJM -g gz00
#PJM -N demo-full-train
#PJM -o {FOLDER}/%j.pjm.out
#PJM -j
#PJM -x OMP_NUM_THREADS=9
#PJM --norestart

# submitit's logs (the script opens them: no reliance on PJM's %j for bulk sub-jobs)
submitit_job_id="${PJM_JOBID%%\[*}"
exec >>"{FOLDER}/${submitit_job_id}_0_log.out" 2>>"{FOLDER}/${submitit_job_id}_0_log.err"

# setup
module load cuda/12.2
source $HOME/venv/bin/activate

# command
export SUBMITIT_EXECUTOR=pjm
export SUBMITIT_PJM_NODES=1
trap : XCPU  # PJM's elapse warning: python checkpoints on it; the script lives on to return its status
{PYTHON} -u -m submitit.core._submit {FOLDER}
