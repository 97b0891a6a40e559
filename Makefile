# Scones Unlimited: local-first ML workflow with AWS parity.
# Every target that needs Python creates .venv and installs the pinned dependencies itself.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKEND ?= embedded
PYTEST_ARGS ?=
export BACKEND

.DEFAULT_GOAL := help
.PHONY: help venv up down status env test lint format typecheck bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The stamp is newer than the lock file and pyproject.toml once they are installed:
# a second run does nothing, a changed lock reinstalls.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || { echo "Creating $(VENV) (first run: installs ~5.5 GB of pinned packages, a few minutes)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip==26.3
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	@# The repo's packages (services, scripts, model, ...) importable from anywhere in the venv.
	@$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'scones_unlimited.pth').write_text('$(CURDIR)\n')"
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the pinned dependencies (done by every target)

up: $(STAMP) ## Start the local stack in the background and write the `local` AWS profile
	@$(PY) -m scripts.stack up

down: $(STAMP) ## Stop everything `make up` started
	@$(PY) -m scripts.stack down

status: $(STAMP) ## Say what runs where
	@$(PY) -m scripts.stack status

env: $(STAMP) ## Print export lines: eval "$$(make -s env)"
	@$(PY) -m scripts.stack env

test: $(STAMP) ## Run the integration tests against real local processes
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff format and autofix
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy on the project's packages
	@$(VENV)/bin/mypy

bench: $(STAMP) ## Benchmarks (ratios against baselines run in the same script)
	@$(PY) -m benchmarks.bench_local_aws

clean: ## Stop the stack and remove the state folder (keeps .venv)
	@-test -x $(PY) && $(PY) -m scripts.stack down
	rm -rf .state
