# Every target installs what it needs into .venv on first use; later runs reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MPRM := $(VENV)/bin/mprm-hf
export HF_HUB_DISABLE_TELEMETRY := 1
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser demo test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,demo]'
	$(PY) -m pip install -q --no-build-isolation -c constraints.txt deepspeed
	touch $(STAMP)

# The main job on the embedded default: a synthetic world, BIS-10% vs random-10% vs full data, each trained
# and scored, the table, the plot and the Hub folders. Offline, on a CPU, in a few minutes.
demo: $(STAMP)
	$(MPRM) quickstart

# The Space's browser test drives Debian's Chromium; without it (no root, no apt) that test is skipped.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2 --timeout 900

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2 -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache embedded
