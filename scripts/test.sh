#!/usr/bin/env bash
# `make test`: the whole suite. Unit tests; the real daemon against real s3fs and SeaweedFS;
# the engine scenarios under Podman 4.3 and Docker Engine 26 (tests/e2e_podman.rs, e2e_docker26.rs);
# the end-to-end tests against a real Docker engine (with the Python client kit's pytest suite);
# a bounded fuzzing run (scripts/fuzz.sh).
# Under CI=true every prerequisite is required (a missing one fails the run); otherwise tests
# whose prerequisites are missing are reported as ignored (build.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

groups=(fuzz metrics client podman)
if [ "${CI:-}" = true ] || docker version >/dev/null 2>&1; then groups+=(docker); fi
scripts/deps.sh "${groups[@]}"

cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --all-targets --locked -- -D warnings
# Doc comments are where a newcomer reads why: their links must resolve.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --locked
# The Python client kit's own tests; its end-to-end tests under dockerd run from
# tests/e2e_deploy.rs (which sets up the plugin and SeaweedFS they need).
(cd clients/python && .venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/e2e)
cargo build --release --locked
cargo test --locked -- --test-threads="${BAI_S3_TEST_THREADS:-4}"
scripts/fuzz.sh
