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
"$BIN" bench --vcpus 1,2,4,8,16 --mode prefill,uffd,exit --telemetry both --repeat 5 \
    --json >"$OUT/bench.json" 2>"$OUT/bench.err"
# Both memory backings side by side, interleaved (the run above uses the default, shmem).
"$BIN" bench --vcpus 1,4,16 --mode uffd,exit --backing anon,shmem --repeat 5 \
    --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 --json >"$OUT/backings.json" 2>>"$OUT/bench.err"
# The same at 16 vCPUs with the threads placed by the scheduler.
"$BIN" bench --vcpus 16 --mode uffd,exit --no-pin --repeat 3 \
    --push-mem 0 --downtime-vcpus 0 --frame-vcpus 0 >"$OUT/no-pin-16.txt" 2>>"$OUT/bench.err"
# Pages over TCP against local copies; the push is timed over TCP.
"$BIN" bench --vcpus 1,4,16 --mode uffd,exit --transport tcp,local --repeat 3 \
    --downtime-vcpus 0 --frame-vcpus 0 --json >"$OUT/tcp.json" 2>>"$OUT/bench.err"
echo done >"$OUT/done"
