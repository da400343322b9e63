# The two commands a newcomer needs (see README): `make demo` and `make test`.
# Both set up the virtualenv on first use (scripts/bootstrap).
VENV ?= $(or $(EDGEFLEET_VENV),$(CURDIR)/.venv)
export EDGEFLEET_VENV := $(VENV)

.PHONY: setup demo test lint agent-check bench
setup:
	@./scripts/bootstrap

demo: setup
	$(VENV)/bin/edgefleet demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	@./scripts/lint

agent-check:
	@"$${PYTHON:-python3}" scripts/check_agent_install.py

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py
