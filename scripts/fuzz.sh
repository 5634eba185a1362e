#!/usr/bin/env bash
# Bounded coverage-guided fuzzing (cargo fuzz, libFuzzer) of request decoding and volume
# options: first every input that ever failed (fuzz/regressions/<target>/) runs once, then
# each target fuzzes for BAI_S3_FUZZ_SECONDS (default 60) from fuzz/seeds/<target>/.
# A failure stops the run; libFuzzer leaves the input in fuzz/artifacts/<target>/. Fix the
# bug and move that file into fuzz/regressions/<target>/, which is kept in git.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${BAI_S3_FUZZ_SECONDS:-60}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# No sanitizer: the code under test is safe Rust, and without one the stable toolchain builds
# the targets. Debug assertions on, so that overflows fail too.
flags=(-O -a -s none)

# Run cargo fuzz with its chatter in a log; on failure show the end of it and stop.
run() {
  local what=$1; shift
  if ! cargo fuzz run "${flags[@]}" "$@" >"$work/log" 2>&1; then
    tail -n 40 "$work/log" >&2
    echo "fuzz: $what failed; the input is in fuzz/artifacts/ (see above)" >&2
    exit 1
  fi
}

for t in request options; do
  if compgen -G "regressions/$t/*" >/dev/null; then
    echo "fuzz: $t: replaying $(find "regressions/$t" -type f | wc -l) regression inputs"
    run "$t (regressions)" "$t" "regressions/$t" -- -runs=0
  fi
  mkdir -p "$work/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  run "$t" "$t" "$work/$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1
  echo "fuzz: $t: $(grep -E '^stat::number_of_executed_units' "$work/log" | awk '{print $2}') inputs in ${secs} s, no failure"
done
