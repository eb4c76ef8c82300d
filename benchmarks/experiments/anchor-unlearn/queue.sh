#!/bin/bash
# runs diag.py once per line of the queue file given, sequentially, appending to <name>.log
while read -r name entry opts; do
  [ -z "$name" ] && continue
  [ -f "$name.done" ] && continue
  PYTHONPATH=/work/main HF_HUB_OFFLINE=1 /work/main/.venv/bin/python diag.py "$entry" "$opts" > "$name.log" 2>&1 && touch "$name.done"
done < "$1"
