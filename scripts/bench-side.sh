#!/bin/sh
# faultline bench and the C reference side by side, round by round, on one machine:
#   cc -O2 -pthread -o demand_paging bench/reference/demand_paging.c
#   BIN=target/release/faultline REF=./demand_paging VCPUS="1 2" ROUNDS=7 sh scripts/bench-side.sh
#   (PREFETCH="off adaptive" measures faultline with each strategy against the same C runs)
# Each round runs every configuration once in both; faultline's results go to
# $OUT/faultline-ROUND.json, the C reference's lines to $OUT/c-ROUND.txt.
set -eu
BIN=${BIN:-./target/release/faultline}
REF=${REF:-./demand_paging}
VCPUS=${VCPUS:-1 2}
MODES=${MODES:-prefill uffd exit}
BACKINGS=${BACKINGS:-shmem anon}
# faultline's prefetch strategies (the C reference fetches one page a fault).
PREFETCH=${PREFETCH:-off}
ROUNDS=${ROUNDS:-7}
OUT=${OUT:-./side-out}
mkdir -p "$OUT"
list() { echo "$1" | tr ' ' ','; }
# A failed run is said on stderr and the rest go on; the exit status says one failed.
status=0
round=1
while [ "$round" -le "$ROUNDS" ]; do
    "$BIN" bench --vcpus "$(list "$VCPUS")" --mode "$(list "$MODES")" \
        --backing "$(list "$BACKINGS")" --prefetch "$(list "$PREFETCH")" --repeat 1 --push-mem 0 --downtime-vcpus 0 \
        --frame-vcpus 0 --json >"$OUT/faultline-$round.json" || {
        echo "bench-side: round $round: faultline bench failed" >&2
        status=1
    }
    # Every line the reference prints (a trial, then its median).
    for v in $VCPUS; do
        for m in $MODES; do
            for b in $BACKINGS; do
                "$REF" -M "$m" -b "$b" -v "$v" -r 1 || {
                    echo "bench-side: round $round: demand_paging -M $m -b $b -v $v failed" >&2
                    status=1
                }
            done
        done
    done >"$OUT/c-$round.txt"
    round=$((round + 1))
done
exit "$status"
