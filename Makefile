# Two commands run everything: `make up` and `make test`.
SHELL := /bin/bash
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
TALLY_RELEASE := target/release/tally

VENV := .venv

.PHONY: up test services build fmt lint unit tools chromium

## up: start the dependencies, migrate, seed the demo and run every role
up: services build
	$(TALLY_RELEASE) migrate
	$(TALLY_RELEASE) seed-demo
	$(TALLY_RELEASE) serve

## test: the dependencies, then formatting, lints and every test
test: services tools fmt lint unit

## tools: test-only helpers from PyPI, in a project-local virtualenv
tools: $(VENV)/.installed tests/browser/node_modules/.installed chromium

chromium:
	@command -v chromium >/dev/null || { sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nodejs npm >/dev/null; }

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --silent
	touch $@

$(VENV)/.installed: tests/tools/requirements.txt
	python3 -m venv $(VENV) || { sudo apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q -r tests/tools/requirements.txt
	touch $@

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
