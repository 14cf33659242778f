#!/usr/bin/env bash
# How tests/data/v0.1 was made: by gcpo 0.1 as it was at commit 389f727 (before the schema's
# renames of migration m003), so that test_db.py can check an old database upgrades in place.
# Run from the repository root at that commit: bash tests/data/v0.1/make.sh
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
export GCPO_HOME=/tmp/gcpo-v0.1-home HF_HUB_OFFLINE=1
rm -rf "$GCPO_HOME"
gcpo=.venv/bin/gcpo
$gcpo ingest synthetic:arithmetic --name arith --count 24 --levels 1 >/dev/null
$gcpo train --recipe tiny -o steps=2 -o save_every=1 --json > "$out/train.json"
$gcpo eval --model golden --data arith --json >/dev/null
$gcpo eval --model tiny --data arith --limit 3 --max-tokens 8 --json >/dev/null
run=$(python3 -c "import json,sys; print(json.load(open('$out/train.json'))['run_id'])")
rm -rf "$out/gcpo.db" "$out/runs"
sqlite3 "$GCPO_HOME/gcpo.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null 2>&1 || true
python3 - "$GCPO_HOME/gcpo.db" "$out/gcpo.db" <<'PY'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2])
src.backup(dst); dst.execute("PRAGMA journal_mode=DELETE"); dst.close()
PY
mkdir -p "$out/runs/$run"
cp -r "$GCPO_HOME/runs/$run/checkpoints" "$out/runs/$run/"
echo "home was $GCPO_HOME; run $run"
