#!/usr/bin/env bash
# Fixture of the tests/train tests: writes the shards (make_test_shards) and the uninterrupted
# reference runs on 1 and 2 ranks into WORK_ROOT/common, which the other scripts compare against.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
build_common
pass "shards and reference runs (1 and 2 ranks, $STEPS steps) in $common"
