# bai-s3 — the two commands that matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: build run test lint plugin plugin-push install bench clean

build:
	$(CARGO) build --release --locked

## Install what is missing, start a local SeaweedFS as the `default` backend and the daemon on
## the legacy socket, so that `docker volume create -d bai-s3 -o bucket=demo v` works at once.
run: build
	scripts/deps.sh
	scripts/run-local.sh

## The whole test suite: unit tests, the real daemon against real s3fs and SeaweedFS, and the
## end-to-end tests against a real Docker engine (required under CI=true).
test:
	scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

## Build the managed plugin into build/plugin and `docker plugin create` it (name: bai-s3).
plugin: build
	plugin/build.sh

## Build the managed plugin as $(REGISTRY)/bai-s3:$(PLUGIN_VERSION) and push it, for
## `docker plugin install $(REGISTRY)/bai-s3:$(PLUGIN_VERSION)` on every host; the local copy
## is removed after the push. Run it on a build machine: a plugin of that name is replaced.
PLUGIN_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
plugin-push: build
	@[ -n "$(REGISTRY)" ] || { echo "make plugin-push: set REGISTRY, e.g. make plugin-push REGISTRY=registry.example:5000" >&2; exit 2; }
	BAI_S3_PLUGIN_NAME=$(REGISTRY)/bai-s3:$(PLUGIN_VERSION) BAI_S3_PLUGIN_VERSION=$(PLUGIN_VERSION) plugin/build.sh
	docker plugin push $(REGISTRY)/bai-s3:$(PLUGIN_VERSION)
	docker plugin rm $(REGISTRY)/bai-s3:$(PLUGIN_VERSION)

## Legacy (non-managed) install: binary, systemd unit, example backends file.
install: build
	install -D -m 0755 target/release/bai-s3 $(DESTDIR)$(PREFIX)/bin/bai-s3
	install -D -m 0644 plugin/bai-s3.service $(DESTDIR)/etc/systemd/system/bai-s3.service
	install -d -m 0700 $(DESTDIR)/etc/bai-s3
	[ -e $(DESTDIR)/etc/bai-s3/backends.toml ] || install -m 0600 plugin/backends.toml.example $(DESTDIR)/etc/bai-s3/backends.toml

## bai-s3 side by side with `rclone serve docker` on a local SeaweedFS: Mount latency, fan-in,
## churn, memory and data path; markdown table on stdout, JSON in target/bench/compare.json.
## BAI_S3_BENCH_QUICK=1 for smaller sizes (a few minutes). Needs root (FUSE, drop_caches).
bench:
	scripts/deps.sh bench
	$(CARGO) bench --locked --bench compare

clean:
	$(CARGO) clean
	rm -rf build
