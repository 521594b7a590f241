#!/bin/sh
# The 16-core table of BENCHMARKS.md: one prepared run of the release binary and the C
# reference (both built elsewhere and carried here), results into $OUT (or ./bench-out).
# The device brings back at most 8 files: this writes exactly 8.
#   BIN=devbin/faultline REF=devbin/demand_paging sh scripts/bench-device.sh
# then: tar -xzf side.tgz && python3 scripts/side-summary.py side
set -eu
BIN=${BIN:-./target/release/faultline}
REF=${REF:-./demand_paging}
OUT=${OUT:-./bench-out}
mkdir -p "$OUT"
{
    date -u
    uname -r
    nproc
    grep -m1 'model name' /proc/cpuinfo || true
    grep -i kvm /proc/modules || true
    "$BIN" probe || true
} >"$OUT/machine.txt" 2>&1
# Each step writes its own file and a failed step does not stop the rest (its exit status is
# in steps.txt), so a run cut short still brings back what finished.
step() {
    name=$1
    shift
    "$@" >"$OUT/$name" 2>>"$OUT/bench.err"
    echo "$name: exit $?" >>"$OUT/steps.txt"
}
step bench.json "$BIN" bench --vcpus 1,2,4,8,16 --mode prefill,uffd,exit --telemetry both \
    --repeat 5 --json || true
# faultline and the C reference side by side, round by round, on the same lease: the C
# figures of issue 6 came from another sitting on a host of unknown speed. One archive, so
# the files stay within what comes back (scripts/side-summary.py reads it unpacked).
side() {
    rc=0
    BIN=$BIN REF=$REF VCPUS="1 4 16" MODES="uffd exit" BACKINGS=shmem ROUNDS=3 \
        OUT="$OUT/side" sh "$(dirname "$0")/bench-side.sh" >&2 || rc=$?
    # Whatever finished comes back, and the step's status is the run's, not tar's.
    tar -C "$OUT" -czf - side && rm -rf "$OUT/side"
    return "$rc"
}
step side.tgz side || true
# Both memory backings side by side, interleaved (the run above uses the default, shmem).
step backings.json "$BIN" bench --vcpus 1,4,16 --mode uffd,exit --backing anon,shmem \
    --repeat 5 --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 --json || true
# Pages over TCP against local copies; the push is timed over TCP.
step tcp.json "$BIN" bench --vcpus 1,4,16 --mode uffd,exit --transport tcp,local --repeat 3 \
    --downtime-vcpus 0 --frame-vcpus 0 --json || true
# The same at 16 vCPUs with the threads placed by the scheduler.
step no-pin-16.txt "$BIN" bench --vcpus 16 --mode uffd,exit --no-pin --repeat 3 \
    --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 || true
