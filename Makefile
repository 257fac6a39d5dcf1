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

test-long: deps
	$(BIN)/pytest -q --long

# ruff and mypy settings live in pyproject.toml; .ci/run runs this before the tests.
lint: deps
	$(BIN)/ruff check chunkfs tests bench
	$(BIN)/mypy chunkfs

install: deps
	$(BIN)/chunkfs install
