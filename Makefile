# The two set-up commands of the README are `make up` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: deps up down test test-long status install

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

install: deps
	$(BIN)/chunkfs install
