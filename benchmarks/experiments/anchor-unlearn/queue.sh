#!/bin/bash
# runs diag.py once per line ("name entry json-options") of the queue file given, one after another, into <name>.log
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
while read -r name entry opts; do
  [ -z "$name" ] && continue
  [ -f "$name.done" ] && continue
  PYTHONPATH="$REPO" HF_HUB_OFFLINE=1 "$REPO/.venv/bin/python" "$HERE/diag.py" "$entry" "$opts" > "$name.log" 2>&1 \
    && touch "$name.done"
done < "$1"
