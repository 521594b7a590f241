#!/bin/sh
# Starts a QEMU post-copy pair by hand, as your own setup would, and watches it with
# `faultline attach --qmp`. Needs qemu-system-x86_64 (10.0+) and a faultline binary.
# The QMP commands go through socat (apt-get install socat).
# Usage: examples/qemu_attach.sh [GUEST-KERNEL]   (default: a guest faultline builds)
set -eu
for tool in qemu-system-x86_64 socat; do
  command -v $tool >/dev/null || { echo "qemu_attach.sh: $tool is not installed" >&2; exit 2; }
done
dir=$(mktemp -d /tmp/fl-qemu-example.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
faultline=${FAULTLINE:-faultline}
guest=${1:-}
if [ -z "$guest" ]; then
  guest=$dir/guest.bin
  cargo run -q --example write_guest -- "$guest"
fi
common="-machine pc -accel tcg -m 256M -smp 2 -display none -nodefaults -kernel $guest"
# The destination: an observer QMP socket of its own, and the post-copy trace events.
qemu-system-x86_64 $common -name dst,debug-threads=on \
  -qmp unix:$dir/dst.sock,server=on,wait=off -qmp unix:$dir/dst-observer.sock,server=on,wait=off \
  -msg timestamp=on -D $dir/dst.trace \
  -trace 'mark_postcopy_blocktime_*' -trace 'postcopy_blocktime_*' \
  -trace postcopy_ram_fault_thread_request -incoming defer &
qemu-system-x86_64 $common -name src,debug-threads=on \
  -qmp unix:$dir/src.sock,server=on,wait=off -qmp unix:$dir/src-observer.sock,server=on,wait=off &
sleep 1
qmp() { # SOCKET JSON...: one QMP session, one command per argument
  sock=$1; shift
  { echo '{"execute":"qmp_capabilities"}'; for c in "$@"; do echo "$c"; done; sleep 0.2; } \
    | socat - UNIX-CONNECT:"$sock" >/dev/null
}
caps='{"capability":"postcopy-ram","state":true},{"capability":"events","state":true}'
qmp $dir/dst.sock \
  "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[$caps,{\"capability\":\"postcopy-blocktime\",\"state\":true}]}}" \
  "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"unix:$dir/mig.sock\"}}"
qmp $dir/src.sock \
  "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[$caps]}}" \
  '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":33554432,"max-postcopy-bandwidth":33554432}}' \
  "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"unix:$dir/mig.sock\"}}"
( sleep 3; qmp $dir/src.sock '{"execute":"migrate-start-postcopy"}' ) &
"$faultline" attach --qmp $dir/dst-observer.sock --trace $dir/dst.trace \
  --source-qmp $dir/src-observer.sock
