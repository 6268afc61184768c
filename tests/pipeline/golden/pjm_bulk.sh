#!/bin/bash

# Parameters
#PJM -L rscgrp=regular-a
#PJM -L node=2
#PJM -L elapse=00:30:00
#PJM -g gz00
#PJM -N demo-full-sample
#PJM -o {FOLDER}/%j.pjm.out
#PJM -j

# submitit's logs (the script opens them: no reliance on PJM's %j for bulk sub-jobs)
submitit_job_id="${PJM_JOBID%%\[*}_${PJM_BULKNUM}"
exec >>"{FOLDER}/${submitit_job_id}_0_log.out" 2>&1

# command
export SUBMITIT_EXECUTOR=pjm
export SUBMITIT_PJM_NODES=2
trap : XCPU  # PJM's elapse warning: python checkpoints on it; the script lives on to return its status
{PYTHON} -u -m submitit.core._submit {FOLDER}
