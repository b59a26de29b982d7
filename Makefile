# bertlab: `make setup` then `make test`. See README.md.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
NAME   ?=
SCALE  ?= default
WORKERS ?= 1
# make test's pytest processes (pytest-xdist): one a core of the 2-core machines CI runs on
TEST_WORKERS ?= 2

.PHONY: setup test test-all test-cluster experiment report bench clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# pinned on purpose: this version resolves to a local CPU wheel; an unpinned torch pulls CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,plot,models,docs]"

test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# includes the tests marked slow (long end-to-end runs)
test-all:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not cluster"

# the documented Slurm job array (docs/slurm/study_array.sbatch) on a one-node Slurm cluster that the
# tests start on this machine and stop (about 2.5 min); installs slurm-wlm and munge with apt-get where
# they are missing (as root); where Slurm cannot start, the tests are skipped with the reason
test-cluster:
	BERTLAB_INSTALL_SLURM=1 $(PY) -m pytest -q -m cluster tests/test_cluster.py

experiment:
	@test -n "$(NAME)" || { echo "usage: make experiment NAME=<name> [SCALE=smoke|default|full] [WORKERS=n]  (see experiments/)"; exit 2; }
	$(PY) -m bertlab experiment $(NAME) --scale $(SCALE) --workers $(WORKERS)

report:
	@test -n "$(NAME)" || { echo "usage: make report NAME=<name>"; exit 2; }
	$(PY) -m bertlab report $(NAME)

bench:
	$(PY) -m bertlab bench

clean:
	rm -rf build *.egg-info .pytest_cache
