# Scones Unlimited: local-first ML workflow with AWS parity.
# Every target that needs Python creates .venv and installs the pinned dependencies itself.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKEND ?= embedded
DEPLOY ?= 1
PYTEST_ARGS ?=
# The local stack's profile (written by `make up`); deploy-aws uses your own AWS_PROFILE instead.
LOCAL_AWS_ENV = AWS_CONFIG_FILE=$(STATE_DIR)/aws/aws-config AWS_SHARED_CREDENTIALS_FILE=$(STATE_DIR)/aws/aws-credentials AWS_PROFILE=local
STATE_DIR ?= $(if $(SCONES_STATE_DIR),$(SCONES_STATE_DIR),$(CURDIR)/.state)
# `make data` / `make train` use the current profile: yours if AWS_PROFILE is set, else `local`.
PROFILE_ENV = $(if $(AWS_PROFILE),,$(LOCAL_AWS_ENV))
export BACKEND

.DEFAULT_GOAL := help
.PHONY: serving-env lock help venv up down status env deploy deploy-plan deploy-aws data train demo graph lambdas test lint format typecheck bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The stamp is newer than the lock file and pyproject.toml once they are installed:
# a second run does nothing, a changed lock reinstalls.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || { echo "Creating $(VENV) (first run: installs ~5.5 GB of pinned packages, a few minutes)"; $(PYTHON) -m venv $(VENV); }
	@# Every pin carries its sha256 (`make lock` refreshes them); pip itself is one of the pins.
	@$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	@# The repo's packages (scones, services, scripts, model, ...) importable from anywhere in the venv.
	@$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'scones_unlimited.pth').write_text('$(CURDIR)\n')"
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the pinned dependencies (done by every target)

# Endpoints run in .venv-serving (the image's packages, CPU-only torch: a worker half the size of
# one on .venv's CUDA build). Where it cannot be built, they run on .venv instead: not fatal.
SERVING_STAMP := .venv-serving/.installed
$(SERVING_STAMP): $(STAMP) services/model_server/requirements.txt
	@$(PY) -m services.model_server.environment >/dev/null || echo "warning: .venv-serving not built; endpoints run on $(VENV)'s torch" >&2

serving-env: $(SERVING_STAMP) ## Create .venv-serving, the model server's own venv (done by up, demo, test, bench)

up: $(STAMP) $(SERVING_STAMP) ## Start the local stack, write the `local` profile, deploy (DEPLOY=0: start only)
	@$(PY) -m scripts.stack up
	@if [ "$(DEPLOY)" = "1" ]; then $(LOCAL_AWS_ENV) $(PY) -m scripts.deploy $(if $(filter localstack-host,$(BACKEND)),--skip-functions); fi

deploy: $(STAMP) ## (Re)deploy everything to the local stack (idempotent)
	@$(LOCAL_AWS_ENV) $(PY) -m scripts.deploy

deploy-plan: $(STAMP) ## List what `make deploy` would change, change nothing
	@$(LOCAL_AWS_ENV) $(PY) -m scripts.deploy --plan

deploy-aws: $(STAMP) ## Deploy to AWS with your profile: make deploy-aws AWS_PROFILE=yours
	@test -n "$(AWS_PROFILE)" -a "$(AWS_PROFILE)" != "local" || { echo "set AWS_PROFILE to your AWS profile: make deploy-aws AWS_PROFILE=yours" >&2; exit 2; }
	@$(PY) -m scripts.deploy --push-image

data: $(STAMP) ## ETL: CIFAR-100 (synthetic offline) -> PNG + manifests -> S3 of the current profile
	@$(PROFILE_ENV) $(PY) -m scripts.etl

train: $(STAMP) ## Create a training job on the current profile and stream its log
	@$(PROFILE_ENV) $(PY) -m scripts.train_job

demo: $(STAMP) $(SERVING_STAMP) ## The whole seed: up, deploy, run test cases, monitoring report
	@$(PY) -m scripts.demo

graph: $(STAMP) ## Render docs/stepfunctions_graph.png from the ASL
	@$(PY) -m scripts.render_graph

down: $(STAMP) ## Stop everything `make up` started
	@$(PY) -m scripts.stack down

status: $(STAMP) ## Say what runs where
	@$(PY) -m scripts.stack status

env: $(STAMP) ## Print export lines: eval "$$(make -s env)"
	@$(PY) -m scripts.stack env

test: $(STAMP) $(SERVING_STAMP) ## Run the integration tests against real local processes
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff format and autofix
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy on the project's packages
	@$(VENV)/bin/mypy

BENCHMARKS ?= bench_local_aws bench_workflow bench_serving bench_train
BENCH_SUMMARY_ARGS ?=
bench: $(STAMP) $(SERVING_STAMP) ## Benchmarks (ratios against baselines run in the same script); BENCHMARKS=... picks
	@set -e; for b in $(BENCHMARKS); do echo "== $$b"; $(PY) -m benchmarks.$$b; done
	@# The summary of issue 15's goals, the peer (ministack, own venv) side by side.
	@echo "== bench_summary"; $(PY) -m benchmarks.bench_summary $(BENCH_SUMMARY_ARGS)

lambdas: $(STAMP) ## Build the three Lambda zips (reproducible) into .state/build/lambdas
	@$(PY) -m lambdas.package --out $(STATE_DIR)/build/lambdas

lock: $(STAMP) ## Refresh the sha256 hashes of requirements.lock and the SDK v2 lock
	@$(PY) -m scripts.lock_hashes requirements.lock $(SDKV2_LOCK)

clean: ## Stop the stack and remove the state folder (keeps .venv)
	@-test -x $(PY) && $(PY) -m scripts.stack down
	rm -rf .state

# -- SDK v2 notebooks (examples/course-style): a second venv, SageMaker Python SDK 2.x -----------
SDKV2_VENV ?= .venv-sdkv2
SDKV2_LOCK := examples/course-style/requirements-sdkv2.lock
SDKV2_STAMP := $(SDKV2_VENV)/.installed
.PHONY: notebook-env notebook

$(SDKV2_STAMP): $(SDKV2_LOCK)
	@test -x $(SDKV2_VENV)/bin/python || { echo "Creating $(SDKV2_VENV) (SDK v2 + Jupyter, ~490 MB, under a minute)"; $(PYTHON) -m venv $(SDKV2_VENV); }
	@$(SDKV2_VENV)/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r $(SDKV2_LOCK)
	@touch $(SDKV2_STAMP)

notebook-env: $(SDKV2_STAMP) ## Create .venv-sdkv2: SageMaker SDK v2, nbclient, ipykernel (pinned)

notebook: $(STAMP) $(SDKV2_STAMP) ## Run the course-style SDK v2 notebook headless on the local stack
	@$(LOCAL_AWS_ENV) $(PY) examples/course-style/run_notebook.py

# -- fault run (issue 13 item 7): executions while a worker, the emulator, sagemaker-local die ----
FAULT_RUN_ARGS ?=
.PHONY: fault-run
fault-run: $(STAMP) ## Executions on a fresh stack while its parts are SIGKILLed; FAULT_RUN_ARGS=--executions 300
	@$(PY) -m benchmarks.fault_run $(FAULT_RUN_ARGS)
