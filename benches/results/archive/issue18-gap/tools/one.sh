#!/bin/bash
# usage: one.sh NAME POINT SECS EXTRA_PERF_ARGS...   (NAME: ref | tsv | tsvN...)
# Starts the server pinned on CPU 0, drives it with the harness (clients on CPU 1),
# perf stat on the server's threads for the middle of the run.
set -u
NAME=$1; POINT=$2; SECS=$3; shift 3
BENCH=/work/wt-gap/target/release/deps/fanout-266454fadbebef64
TSV=${TSV:-/work/wt-gap/target/release/tailsrv}
D=/tmp/gap/run-$NAME-$(date +%H%M%S); mkdir -p $D
F=$D/file.log; : > $F
ulimit -n $(ulimit -Hn)
case $NAME in
  ref*) PORT=7101; taskset -c 0 $BENCH --serve-reference $F --reference-addr 127.0.0.1:$PORT 2>$D/server.err & ;;
  *)    PORT=7102; RUST_LOG=info taskset -c 0 $TSV -p $PORT --bind 127.0.0.1 ${SHARDS:+--shards $SHARDS} $F 2>$D/server.err & ;;
esac
SPID=$!
sleep 1
$BENCH appendcost --append-points $POINT --append-secs $SECS --reps 1 --addr 127.0.0.1:$PORT --file $F --pid $SPID --no-reference --server-cpus 0 --client-cpus 1 ${HARGS:-} --out $D/out > $D/bench.out 2>&1 &
BPID=$!
sleep ${DELAY:-4}
TIDS=$(ls /proc/$SPID/task | paste -sd,)
echo "tids $TIDS" > $D/perf.txt
export SPID TIDS D; "$@" >> $D/perf.txt 2>&1
wait $BPID
kill $SPID; wait $SPID 2>/dev/null
echo $D
