#!/bin/sh
# A soak run: one headless faultline run of SOAK_SECONDS (default 600) over TCP, with a
# timeline that cycles every 20 s through an injection, throttle changes, a link outage
# and a new migration. Its resident memory and open descriptors are sampled every
# SAMPLE seconds; at the end the run's summary must say verified, and both must be flat.
#   cargo build --release && sh scripts/soak.sh
#   BIN=target/release/faultline SOAK_SECONDS=600 MODE=uffd OUT=soak-out sh scripts/soak.sh
#   TRANSPORT=local BACKING=anon PREFETCH=adaptive sh scripts/soak.sh   # no link outages
# (in process, the link actions have no link to cut and are left out).
# Writes $OUT/scenario.toml, $OUT/samples.csv, $OUT/summary.txt, $OUT/stderr.txt; prints
# the figures and a verdict; exit 1 if the run failed, did not verify, or grew.
set -eu
BIN=${BIN:-./target/release/faultline}
SOAK_SECONDS=${SOAK_SECONDS:-600}
SAMPLE=${SAMPLE:-10}
MODE=${MODE:-exit}
TRANSPORT=${TRANSPORT:-tcp}
PREFETCH=${PREFETCH:-off}
BACKING=${BACKING:-}
OUT=${OUT:-./soak-out}
# Allowed growth from the first half of the samples (after the first WARM seconds, while
# the allocator finds its size) to the second, of the floor and of the peaks: anonymous
# resident KiB, descriptors. VERDICT_ONLY=1 judges the samples already in $OUT again.
WARM=${WARM:-120}
RSS_SLACK_KIB=${RSS_SLACK_KIB:-8192}
FD_SLACK=${FD_SLACK:-4}
VERDICT_ONLY=${VERDICT_ONLY:-0}
mkdir -p "$OUT"

cycles=$((SOAK_SECONDS / 20))
status=0
if [ "$VERDICT_ONLY" != 1 ]; then
{
    echo "description = \"soak: ${SOAK_SECONDS}s of injections, throttles, outages, migrations\""
    echo 'vcpus = 2'
    echo 'mem = "256M"'
    echo 'workload = "verify"'
    echo "mode = \"$MODE\""
    echo "transport = \"$TRANSPORT\""
    echo "prefetch = \"$PREFETCH\""
    if [ -n "$BACKING" ]; then echo "backing = \"$BACKING\""; fi
    echo 'fetch_rate = "64MiB/s"'
    echo 'warmup = "1s"'
    echo "duration = \"${SOAK_SECONDS}s\""
    c=0
    while [ "$c" -lt "$cycles" ]; do
        t=$((c * 20))
        # Each action at its moment of the cycle (times count from the first switchover):
        # a range made missing again once the leg is complete, refilled slowly through an
        # outage, then a new migration, whose post-copy runs at 64 MiB/s.
        ms=$((t * 1000))
        printf '[[timeline]]\nat = "%dms"\ninject = "0x%x+16M"\n' $((ms + 5000)) $((0x1000000 + (c % 8) * 0x1000000))
        printf '[[timeline]]\nat = "%dms"\nthrottle = "8MiB/s"\n' $((ms + 5500))
        if [ "$TRANSPORT" = tcp ]; then
            printf '[[timeline]]\nat = "%dms"\nlink = false\n' $((ms + 6000))
            printf '[[timeline]]\nat = "%dms"\nlink = true\n' $((ms + 8000))
        fi
        printf '[[timeline]]\nat = "%dms"\nthrottle = "unlimited"\n' $((ms + 11000))
        printf '[[timeline]]\nat = "%dms"\nmigrate = true\n' $((ms + 15000))
        printf '[[timeline]]\nat = "%dms"\nthrottle = "64MiB/s"\n' $((ms + 16000))
        c=$((c + 1))
    done
} >"$OUT/scenario.toml"

"$BIN" run --headless "$OUT/scenario.toml" >"$OUT/summary.txt" 2>"$OUT/stderr.txt" &
pid=$!
echo "seconds,rss_kib,rss_anon_kib,rss_shmem_kib,fds,threads" >"$OUT/samples.csv"
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    now=$(($(date +%s) - start))
    st=/proc/$pid/status
    if [ -r "$st" ]; then
        rss=$(awk '/^VmRSS:/ {print $2}' "$st")
        anon=$(awk '/^RssAnon:/ {print $2}' "$st")
        shm=$(awk '/^RssShmem:/ {print $2}' "$st")
        thr=$(awk '/^Threads:/ {print $2}' "$st")
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        [ -n "$rss" ] && echo "$now,$rss,$anon,$shm,$fds,$thr" >>"$OUT/samples.csv"
    fi
    sleep "$SAMPLE"
done
wait "$pid" || status=$?
fi

python3 - "$OUT" "$status" "$RSS_SLACK_KIB" "$FD_SLACK" "$WARM" <<'EOF'
import csv, sys
out, status, rss_slack, fd_slack, warm_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/samples.csv"))]
bad = []
if status != 0:
    bad.append(f"the run exited {status}: " + open(f"{out}/stderr.txt").read().strip().splitlines()[-1:][0])
summary = open(f"{out}/summary.txt").read()
notes = open(f"{out}/stderr.txt").read().splitlines()
said = lambda what: sum(what in n for n in notes)
verified = next((l for l in summary.splitlines() if l.startswith("verified:")), None)
print(f"migrations {said('switched over')}, injections {said('] injected ')}, throttle changes "
      f"{said('fetch rate set to')}, outages {said('link down:')}, refusals {said('refused')}")
print(verified or "no verification line")
if verified is None or " 0 mismatches, 0 guest errors" not in verified or not any(
        "finished: verified" in n for n in notes):
    bad.append("not verified")
warm = [r for r in rows if r["seconds"] >= warm_s] or rows
if warm:
    first, last = warm[0], warm[-1]
    rss = [r["rss_kib"] for r in warm]
    fds = [r["fds"] for r in warm]
    print(f"samples {len(rows)}; from {first['seconds']} s to {last['seconds']} s: "
          f"RSS {first['rss_kib'] // 1024} -> {last['rss_kib'] // 1024} MiB "
          f"(min {min(rss) // 1024}, max {max(rss) // 1024}; anon {first['rss_anon_kib'] // 1024} -> "
          f"{last['rss_anon_kib'] // 1024} MiB, max {max(r['rss_anon_kib'] for r in warm) // 1024}; "
          f"shmem max {max(r['rss_shmem_kib'] for r in warm) // 1024} MiB), descriptors {first['fds']} -> {last['fds']} "
          f"(min {min(fds)}, max {max(fds)}), threads {first['threads']} -> {last['threads']}")
    # A leak raises the floor and the peaks over time: each half's against the other's.
    half = len(warm) // 2
    early, late = warm[: max(half, 1)], warm[half:]
    for key, slack, what, unit in (("rss_anon_kib", rss_slack, "anonymous memory", 1024),
                                   ("fds", fd_slack, "open descriptors", 1)):
        e = [r[key] for r in early]
        l = [r[key] for r in late]
        print(f"{what}: first half min {min(e) // unit} max {max(e) // unit}, "
              f"second half min {min(l) // unit} max {max(l) // unit}")
        if max(l) - max(e) > slack or min(l) - min(e) > slack:
            bad.append(f"{what} grew: {min(e) // unit}..{max(e) // unit} then "
                       f"{min(l) // unit}..{max(l) // unit}")
print("soak: " + ("FAILED: " + "; ".join(bad) if bad else "flat and verified"))
sys.exit(1 if bad else 0)
EOF
