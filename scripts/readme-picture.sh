#!/usr/bin/env bash
# Makes docs/images/crossword.heatmap.png, the README's picture: a drawn scene (a red disc
# and a crossword grid, ours to publish, unlike the ImageNet samples) explained by iscamd.
# Needs python3 with Pillow (scripts/setup.sh installs it) and the models (ISCAMD_MODEL_DIR);
# ISCAMD names an iscamd binary to use instead of `cargo run --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/crossword.png" <<'PY'
import random, sys
from PIL import Image, ImageDraw
random.seed(1)
size = 400
img = Image.new("RGB", (size, size))
d = ImageDraw.Draw(img)
for y in range(size):
    c = int(150 + 60 * y / size)
    d.line([(0, y), (size, y)], fill=(c, c - 10, c - 30))
d.ellipse([40, 60, 150, 170], fill=(180, 60, 50))
x0, y0, cell = 190, 180, 19
for i in range(9):
    for j in range(9):
        fill = (20, 20, 20) if random.random() < 0.22 else (250, 250, 250)
        box = [x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell, y0 + (j + 1) * cell]
        d.rectangle(box, fill=fill, outline=(0, 0, 0))
img.save(sys.argv[1])
PY
${ISCAMD:-cargo run --release --quiet --} explain "$work/crossword.png" --out "$work/out"
cp "$work/out/crossword.heatmap.png" docs/images/crossword.heatmap.png
echo "wrote docs/images/crossword.heatmap.png"
