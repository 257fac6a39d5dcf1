# The two set-up commands of the README are `make up` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: deps up down test test-long lint status install

deps:
	@bash scripts/bootstrap.sh

up: deps
	$(BIN)/chunkfs up

down:
	$(BIN)/chunkfs down

status:
	$(BIN)/chunkfs status

test: deps
	$(BIN)/pytest -q

# The long tests only (marked `long`, which `make test` deselects), not shuffled but the shortest
# first, so a run cut short has finished as many as it could; -v and --durations put each one's
# result and time in the log. A file with a new long test goes into this list (pytest puts files
# given beside their directory back into name order, so the list is the whole selection).
LONG_TESTS_FIRST := tests/test_ha_local.py tests/test_locks.py tests/test_netns_locks.py tests/test_netns_failures.py tests/test_netns_failover.py tests/test_security.py tests/test_write_back.py \
	tests/test_file_exerciser.py tests/test_quotas.py tests/test_fuzz_routes.py tests/test_s3_compat.py tests/test_posix_model.py tests/test_large_directory.py

# LONG_BUDGET_S: how long each long randomized test (the models, the fuzzers, the file exerciser)
# may spend on its examples (tests/long_budget.py); `make test-long LONG_BUDGET_S=` (empty) runs
# every example, as the tests' counts say (hours).
LONG_BUDGET_S ?= 300

test-long: deps
	$(BIN)/pytest -v --long -m long -p no:randomly --durations=0 $(if $(LONG_BUDGET_S),--long-budget-s=$(LONG_BUDGET_S)) $(LONG_TESTS_FIRST)

# ruff and mypy settings live in pyproject.toml; .ci/run runs this before the tests.
lint: deps
	$(BIN)/ruff check chunkfs tests bench
	$(BIN)/mypy chunkfs

install: deps
	$(BIN)/chunkfs install
