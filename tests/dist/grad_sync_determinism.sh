#!/usr/bin/env bash
# The ordered gradient sync gives the same bits on 1, 2 and 4 ranks; a plain sequential sum
# (what a naive implementation does) would not, which the J=8 values are chosen to expose.
set -euo pipefail
bin=$1
out1=$(mpirun -np 1 "$bin" 8 10000) out2=$(mpirun -np 2 "$bin" 8 10000) out4=$(mpirun -np 4 "$bin" 8 10000)
field() { echo "$1" | awk -v k="$2" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}'; }
echo "1 rank:  $out1"; echo "2 ranks: $out2"; echo "4 ranks: $out4"
[ "$(field "$out1" naive)" != "$(field "$out4" naive)" ] || { echo "FAIL: the test values do not expose a change of summation order"; exit 1; }
[ "$(field "$out1" ordered)" = "$(field "$out2" ordered)" ] && [ "$(field "$out1" ordered)" = "$(field "$out4" ordered)" ] \
    || { echo "FAIL: the ordered sync differs between world sizes"; exit 1; }
echo "ordered sync: identical bits on 1, 2 and 4 ranks"
# the sharded exchange in pieces of 1000 floats (several per shard; the last shard is shorter)
TGA_SYNC_PIECE_FLOATS=1000 mpirun -np 4 -x TGA_SYNC_PIECE_FLOATS "$bin" 8 10000 | grep -q "^sharded:" \
    || { echo "FAIL: the sharded sync in pieces"; exit 1; }
echo "sharded sync in pieces: equal to the ordered sum"
