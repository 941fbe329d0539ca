#!/usr/bin/env bash
# docs/report.png: the page that `cnnrt eval --report` writes for the shipped model over the whole
# MNIST test set, as Debian's chromium (headless) shows it. Run by `make docs-report`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-chromium}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
browser() {
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
        --user-data-dir="$tmp/profile" "$@" 2>"$tmp/chromium.log"
}

"$PY" -m cnnrt eval --backend numpy --model models/deep_mnist/deep_mnist.safetensors --report "$tmp/report.html"

# the page's full height, measured by the browser, so that the screenshot holds all of it
sed 's|</body>|<script>addEventListener("load", () => { document.body.dataset.height = document.documentElement.scrollHeight; })</script></body>|' \
    "$tmp/report.html" >"$tmp/measure.html"
height=$(browser --window-size=1200,1000 --dump-dom "file://$tmp/measure.html" | sed -n 's/.*data-height="\([0-9]*\)".*/\1/p' | head -n 1)
[ -n "$height" ] || { echo "chromium did not measure the page:" >&2; cat "$tmp/chromium.log" >&2; exit 1; }

browser --screenshot="$tmp/report.png" --window-size="1200,$height" "file://$tmp/report.html"
mv "$tmp/report.png" docs/report.png
echo "wrote docs/report.png (1200 x $height)"
