# Two commands run everything: `make up` and `make test`.
SHELL := /bin/bash
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
TALLY_RELEASE := target/release/tally

.PHONY: up test services build migrate seed check fmt lint unit

## up: start the dependencies, migrate, seed the demo and run every role
up: services build
	$(TALLY_RELEASE) migrate
	$(TALLY_RELEASE) seed-demo
	$(TALLY_RELEASE) serve

## test: the dependencies, then formatting, lints and every test
test: services fmt lint unit

services:
	@./scripts/ensure-services.sh

build:
	$(CARGO) build --release --bin tally

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace
