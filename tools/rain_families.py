"""docs/rain_families.jpg: one synthetic scene, clean and under every rain preset, a row per family.

    python tools/rain_families.py                       # writes docs/rain_families.jpg
    python tools/rain_families.py --out /tmp/rain.jpg --size 320 --scene 5

Each row starts with the clean scene, then the family's presets (utils.data.rain.PRESETS, in their
order); the scene is utils.data.synthetic.render_scene's image ``--scene`` of world seed 0, and its
rain that of variant ``<preset>_v0`` with rain seed 0, as Make_Synthetic_World.py would render it.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from utils.data.rain import FAMILIES, family_presets, rain_rng, render_rain  # noqa: E402
from utils.data.synthetic import render_scene  # noqa: E402

GAP, LABEL = 4, 18  # pixels between panels; height of the label strip above each panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "rain_families.jpg"))
    parser.add_argument("--size", type=int, default=192, help="side of each square panel, in pixels")
    parser.add_argument("--scene", type=int, default=3, help="image id of the scene (world seed 0)")
    args = parser.parse_args()
    clean, _ = render_scene(np.random.default_rng([0, args.scene]), args.size)
    rows = [[("clean", clean)] + [(name, render_rain(clean, name, rain_rng(0, args.scene, f"{name}_v0")))
                                  for name in family_presets(family)] for family in FAMILIES]
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * (args.size + GAP) - GAP, len(rows) * (args.size + LABEL + GAP) - GAP),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (name, pixels) in enumerate(row):
            x, y = c * (args.size + GAP), r * (args.size + LABEL + GAP)
            draw.text((x + 3, y + 3), name, fill="black")
            sheet.paste(Image.fromarray(pixels), (x, y + LABEL))
    sheet.save(args.out, quality=80)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
