"""Writes the demo's bundled labelled photo set, delf_ret/demo_data/, from ../shared/data.

Only redistributable photos are used (LightGlue, OpenCV and VLFeat samples; never
the PhotoTourism photos, the training photos or UKBench): 7 places with 2 photos
each and 6 OpenCV sample photos as distractors, longer side 640 px, JPEG quality
85. Writes labels.csv (image,landmark; an empty landmark marks a distractor).

Usage: python scripts/make_demo_data.py [SHARED_DATA_DIR]
"""

from __future__ import annotations

import pathlib
import sys

from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = REPO / "delf_ret" / "demo_data"
MAX_SIDE = 640
# (bundled name, file under the shared data folder, place or "" for a distractor)
PHOTOS = [
  ("sacre_coeur_1", "landmarks/sacre_coeur_lightglue1.jpg", "sacre_coeur"),
  ("sacre_coeur_2", "landmarks/sacre_coeur_lightglue2.jpg", "sacre_coeur"),
  ("campus_building_1", "landmarks/campus_building_DSC_0410.jpg", "campus_building"),
  ("campus_building_2", "landmarks/campus_building_DSC_0411.jpg", "campus_building"),
  ("graffiti_1", "pairs/graf1.png", "graffiti_wall"),
  ("graffiti_3", "pairs/graf3.png", "graffiti_wall"),
  ("leuven_a", "pairs/leuvenA.jpg", "leuven_street"),
  ("leuven_b", "pairs/leuvenB.jpg", "leuven_street"),
  ("roofs_1", "pairs/roofs1.jpg", "roofs"),
  ("roofs_2", "pairs/roofs2.jpg", "roofs"),
  ("river_1", "pairs/river1.jpg", "river"),
  ("river_2", "pairs/river2.jpg", "river"),
  ("aero_1", "pairs/aero1.jpg", "aerial_view"),
  ("aero_3", "pairs/aero3.jpg", "aerial_view"),
  ("opencv_building", "distractors/building.jpg", ""),
  ("opencv_home", "distractors/home.jpg", ""),
  ("opencv_board", "distractors/board.jpg", ""),
  ("opencv_stuff", "distractors/stuff.jpg", ""),
  ("opencv_messi5", "distractors/messi5.jpg", ""),
  ("opencv_starry_night", "distractors/starry_night.jpg", ""),
]


def main() -> None:
  shared = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
  OUTPUT.mkdir(parents=True, exist_ok=True)
  for old in OUTPUT.glob("*.jpg"):
    old.unlink()
  rows = ["image,landmark"]
  for name, source, place in PHOTOS:
    with Image.open(shared / source) as image:
      image = image.convert("RGB")
      factor = min(1.0, MAX_SIDE / max(image.size))
      size = (round(image.width * factor), round(image.height * factor))
      image.resize(size, Image.Resampling.LANCZOS).save(OUTPUT / f"{name}.jpg", quality=85)
    rows.append(f"{name}.jpg,{place}")
  (OUTPUT / "labels.csv").write_text("\n".join(rows) + "\n")
  total = sum(p.stat().st_size for p in OUTPUT.iterdir())
  print(f"wrote {len(PHOTOS)} photos to {OUTPUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
