#!/usr/bin/env bash
# `make images`: runs the one-shot, then photographs it with headless Chromium:
#   one-shot-terminal.png  the terminal output of `make run`
#   zipkin-trace.png       Zipkin's page of that run's trace
# Writes to $IMAGES_DIR (default images/). Needs `make up` (Redis, placement, scheduler, Zipkin).
set -euo pipefail
cd "$(dirname "$0")/.."

images_dir=${IMAGES_DIR:-images}
work=.run/images
mkdir -p "$images_dir" "$work"

# Headless, as root in a container too; Chromium's D-Bus complaints go to the log, not the terminal.
screenshot() {
  local output=$1 height=$2 url=$3
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1400,$height" \
    --virtual-time-budget=10000 --screenshot="$output" "$url" >>"$work/chromium.log" 2>&1
  echo "  wrote $output"
}

echo "Running the one-shot (output in $work/one-shot.txt)..."
scripts/run-one-shot.sh 2>&1 | tee "$work/one-shot.txt"
trace_url=$(sed -n 's/^Its trace: *//p' "$work/one-shot.txt")
if [ -z "$trace_url" ]; then
  echo "images: the run printed no trace address; is Zipkin up (make up)?" >&2
  exit 1
fi

# The terminal: the run's output without colour codes, as white-on-black text.
{
  echo '<!doctype html><meta charset="utf-8"><body style="margin:0;background:#1e1e1e">'
  echo '<pre style="margin:0;padding:16px;color:#ddd;font:14px/1.35 DejaVu Sans Mono,monospace">'
  printf '$ make run\n'
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' "$work/one-shot.txt"
  echo '</pre>'
} >"$work/one-shot.html"
lines=$(($(wc -l <"$work/one-shot.txt") + 2))
screenshot "$images_dir/one-shot-terminal.png" $((lines * 19 + 40)) "file://$PWD/$work/one-shot.html"
screenshot "$images_dir/zipkin-trace.png" 900 "${trace_url/localhost/127.0.0.1}"
