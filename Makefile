# `make run`: set up and run the whole pipeline. `make test`: set up and run the test suite.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed

# No network at run time; absolute paths so `dvc exp run --temp` logs to the same MLflow store.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: setup run test test-slow clean-venv

setup: $(STAMP) .dvc/config

$(STAMP): requirements.txt constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

.dvc/config: | $(STAMP)
	dvc init -q
	dvc config core.analytics false

run: setup
	dvc repro

test: setup
	python -m pytest -q -m "not slow"

test-slow: setup
	python -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
