#!/bin/sh
# The docker-compose `demo` profile: sends the sample inputs through the workers with
# `warren batch`, round after round, so the Grafana dashboard has live data — successes of several
# modules, plus a few tasks that fail on purpose (a non-zero exit, a trap, an unknown module) so
# the error panels show something too.
#
#   DEMO_ROUNDS  rounds to run (default 60; 0 = until stopped)
#   DEMO_PAUSE   seconds between rounds (default 5)
#   DEMO_SAMPLES the sample inputs (default /demo/samples, where compose mounts deploy/demo)
#   DEMO_OUT     where outputs and results.jsonl go: <DEMO_OUT>/<round>/<module>/ (default /tmp/out)
#
# Outside compose: DEMO_SAMPLES=deploy/demo/samples DEMO_ROUNDS=1 sh deploy/demo/run.sh
set -u

rounds="${DEMO_ROUNDS:-60}"
pause="${DEMO_PAUSE:-5}"
samples="${DEMO_SAMPLES:-/demo/samples}"
out="${DEMO_OUT:-/tmp/out}"

batch() {
  module="$1"; inputs="$2"; shift 2
  mkdir -p "$out/$round"
  warren batch "$module" --inputs "$inputs" --out "$out/$round/$module" "$@"
}

# Batches that should succeed: count the ones that did not.
expect_success() {
  batch "$@" || { failed=$((failed + 1)); echo "demo: batch $1 did not succeed" >&2; }
}

failed=0
of=""
[ "$rounds" -eq 0 ] || of=" of $rounds"
round=1
while [ "$rounds" -eq 0 ] || [ "$round" -le "$rounds" ]; do
  echo "== demo round $round$of"
  expect_success upper "$samples/text"
  expect_success wc "$samples/text"
  expect_success sha256 "$samples/text"
  expect_success csv2json "$samples/csv"
  # Failing on purpose (warren batch exits non-zero when a task does not succeed).
  [ $((round % 3)) -eq 0 ] && { batch exit "$samples/csv" --arg 3 || true; }
  [ $((round % 5)) -eq 0 ] && { batch trap "$samples/csv" || true; }
  [ $((round % 7)) -eq 0 ] && { batch missing "$samples/csv" || true; }
  round=$((round + 1))
  sleep "$pause"
done
echo "== demo done: $((round - 1)) rounds, $failed batches that should have succeeded did not"
[ "$failed" -eq 0 ]
