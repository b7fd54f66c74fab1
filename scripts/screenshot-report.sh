#!/usr/bin/env bash
# Renders an HTML report in headless Chromium, saves a screenshot and checks that the page
# rendered: the HTML parses with every element closed, it loads nothing from outside the file,
# and the screenshot is not blank.
#   bash scripts/screenshot-report.sh runs/demo/report.html docs/demo-report.png [WIDTH HEIGHT]
# Installs Debian's `chromium` with apt-get when no Chromium is found (needs root).
set -euo pipefail
html="${1:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTH HEIGHT]}"
png="${2:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTH HEIGHT]}"
width="${3:-1280}"
height="${4:-3000}"
[ -f "$html" ] || { echo "screenshot-report: no such file: $html" >&2; exit 2; }

browser=""
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then browser="$b"; break; fi
done
if [ -z "$browser" ]; then
  echo "screenshot-report: installing Debian's chromium" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  browser=chromium
fi

python3 - "$html" <<'PY'
import sys
from html.parser import HTMLParser
VOID = {"area","base","br","col","embed","hr","img","input","link","meta","source","track","wbr"}
class Check(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.srcs = [], [], []
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith(("data:", "#")):
                self.errors.append(f"external {k}={v[:60]}")
        if tag == "script" or tag == "link":
            self.errors.append(f"<{tag}> element")
        if tag not in VOID:
            self.stack.append(tag)
    def handle_startendtag(self, tag, attrs):
        pass
    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
c = Check()
c.feed(open(sys.argv[1], encoding="utf-8").read())
c.close()
if c.stack:
    c.errors.append(f"unclosed {c.stack}")
if c.errors:
    sys.exit("screenshot-report: HTML check failed: " + "; ".join(c.errors[:5]))
print("screenshot-report: HTML parses, every element closed, no external resources")
PY

abs="$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
mkdir -p "$(dirname "$png")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size="$width,$height" --screenshot="$png" "file://$abs" >/dev/null 2>&1
[ -s "$png" ] || { echo "screenshot-report: chromium wrote no screenshot" >&2; exit 1; }

python3 - "$png" <<'PY'
import sys, zlib, struct
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w, h, ct = 8, b"", 0, 0, 0
while pos < len(data):
    n, = struct.unpack(">I", data[pos:pos+4]); typ = data[pos+4:pos+8]; body = data[pos+8:pos+8+n]
    if typ == b"IHDR":
        w, h, _, ct = struct.unpack(">IIBB", body[:10])
    elif typ == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
ch = {0: 1, 2: 3, 4: 2, 6: 4}.get(ct, 3)
stride = w * ch + 1
# Undo the PNG row filters to get real pixel values.
prev = bytearray(w * ch); values = set(); dark = 0
for y in range(h):
    f = raw[y*stride]; row = bytearray(raw[y*stride+1:(y+1)*stride])
    for i in range(len(row)):
        a = row[i-ch] if i >= ch else 0; b = prev[i]; c = prev[i-ch] if i >= ch else 0
        if f == 1: row[i] = (row[i] + a) & 255
        elif f == 2: row[i] = (row[i] + b) & 255
        elif f == 3: row[i] = (row[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    if y % 4 == 0:
        values.update(row[::ch*3])
        dark += sum(1 for v in row[::ch] if v < 128)
    prev = row
if len(values) < 16 or dark < 1000:
    sys.exit(f"screenshot-report: the screenshot looks blank ({len(values)} grey levels, {dark} dark samples)")
print(f"screenshot-report: {sys.argv[1]} {w}x{h}, {len(values)} grey levels, {dark} dark pixels sampled: rendered")
PY
