# The two commands of the README's quick start. Both create the environment when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# torch's CPU build, which the package registry here serves from local disk; on a GPU machine
# install torch yourself first and the venv keeps it.
TORCH  ?= torch==2.13.0

.PHONY: env test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

env: $(VENV)/.installed

# the scheduler tests run against a real local Slurm, brought up here where that can work (root on
# Debian: env/local-slurm.sh, idempotent); elsewhere they are skipped and say why
test: env
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    bash env/local-slurm.sh up || echo "local Slurm did not come up: its tests will be skipped" >&2; fi
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# the unit tier: no CLI, trainer, job or Slurm started (under 2 minutes on 2 cores); `make test` is all
test-fast: env
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not integration and not slurm and not slow"

# the demo study (target and full noising) on the local executor, then its one table
demo: env
	OMP_NUM_THREADS=2 $(VENV)/bin/pipeline submit jobs/demo_study.yaml --wait
	$(VENV)/bin/pipeline results demo

clean:
	rm -rf $(VENV) runs
