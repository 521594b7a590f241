#!/bin/sh
# The 16-core table of BENCHMARKS.md: one prepared run of the release binary (built
# elsewhere and carried here), results into $OUT (or ./bench-out).
set -eu
BIN=${BIN:-./target/release/faultline}
OUT=${OUT:-./bench-out}
mkdir -p "$OUT"
{
    date -u
    uname -r
    nproc
    grep -m1 'model name' /proc/cpuinfo || true
    grep -i kvm /proc/modules || true
} >"$OUT/machine.txt" 2>&1
"$BIN" probe >"$OUT/probe.txt" 2>&1 || true
"$BIN" bench --vcpus 1,2,4,8,16 --mode prefill,uffd,exit --telemetry both --repeat 3 \
    --json >"$OUT/bench.json" 2>"$OUT/bench.err"
# uffd with one shared userfaultfd: reader counts and readers that spin briefly.
for r in 2 4 8; do
    "$BIN" bench --vcpus 16 --mode uffd --one-uffd --readers $r --repeat 3 \
        --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 --json >"$OUT/uffd-16v-$r-readers.json" 2>>"$OUT/bench.err"
done
"$BIN" bench --vcpus 1,4,16 --mode uffd --one-uffd --reader-spin 100us --repeat 3 \
    --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 --json >"$OUT/uffd-spin.json" 2>>"$OUT/bench.err"
echo done >"$OUT/done"
