"""The login-node commands stay light: submit, status, watch, retry and cancel import neither torch
nor numpy (`results` draws its plot with matplotlib, which needs numpy)."""

import json
import os
import subprocess
import sys

from helpers import REPO, integration

pytestmark = integration  # each test spawns the CLI or a trainer

SCRIPT = """
import json, sys
from pathlib import Path
from pipeline import cli
assert cli.main(['submit', 'jobs/demo_target.yaml', '--set', 'train.steps=20', '--set', 'train.save_every=10']) == 0
assert cli.main(['cancel', 'demo-target']) == 0
# a complete checkpoint makes status check its manifest (the sample task's input)
folder = Path(sys.argv[1]) / 'demo-target/checkpoints/step_0000010'
folder.mkdir(parents=True)
(folder / 'model.pt').write_bytes(b'x')
(folder / 'meta.json').write_text(json.dumps({'step': 10, 'world_size': 1, 'files': {'model.pt': 1}}))
assert cli.main(['status', 'demo-target', '--json']) == 0
assert cli.main(['watch', 'demo-target', '--interval', '0']) == 1  # a cancelled run: watch ends at once
assert cli.main(['retry', 'demo-target']) == 0  # its local loop starts again...
assert cli.main(['cancel', 'demo-target']) == 0  # ...and stops
print(json.dumps({'heavy': [m for m in ('torch', 'numpy') if m in sys.modules]}))
"""


def test_submit_status_watch_retry_and_cancel_import_neither_torch_nor_numpy(tmp_path):
    root = tmp_path / "runs"
    env = {**os.environ, "PIPELINE_ROOT": str(root), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"state": "cancelled"' in proc.stdout  # status answered about the run
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"heavy": []}
