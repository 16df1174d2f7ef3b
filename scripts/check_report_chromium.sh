#!/usr/bin/env bash
# Render a fedleak HTML report to PNG with headless Chromium, to check what a person would see.
#
#   scripts/check_report_chromium.sh PATH [OUT.png] [WIDTHxHEIGHT]
#
# PATH is a run or sweep folder (its report.html is written first with `fedleak report` when missing) or a
# report .html file. OUT.png defaults to report.png next to the report; the window defaults to 1280x2400.
# Needs Debian's chromium (apt-get update && apt-get install -y chromium) and, for a folder without a
# report, the fedleak command on PATH (e.g. via scripts/venv-run). Chromium runs with no network use of its
# own (no background networking, component updates or first-run tasks) and a throw-away profile.
# Exit codes: 0 PNG written and non-empty, 1 rendering failed, 2 bad arguments or no chromium.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
target=$1
size=${3:-1280x2400}
if [ -d "$target" ]; then
  html="$target/report.html"
  if [ ! -f "$html" ]; then
    fedleak report "$target" --allow-incomplete >/dev/null
  fi
elif [ -f "$target" ]; then
  html=$target
else
  echo "check_report_chromium: $target is neither a folder nor a file" >&2
  exit 2
fi
out=${2:-"$(dirname "$html")/report.png"}
chrome=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then chrome=$c; break; fi
done
if [ -z "$chrome" ]; then
  echo "check_report_chromium: chromium not found (apt-get update && apt-get install -y chromium)" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
abs_html=$(cd "$(dirname "$html")" && pwd)/$(basename "$html")
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$abs_out"
timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --no-first-run --disable-sync --disable-extensions --hide-scrollbars \
  --user-data-dir="$profile" --window-size="${size/x/,}" --screenshot="$abs_out" "file://$abs_html" \
  >/dev/null 2>"$profile/chromium.log" || { cat "$profile/chromium.log" >&2; exit 1; }
if [ ! -s "$abs_out" ]; then
  echo "check_report_chromium: no screenshot written" >&2
  cat "$profile/chromium.log" >&2
  exit 1
fi
echo "$abs_out"
