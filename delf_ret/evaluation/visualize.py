"""Figures as PNG files (matplotlib, no display): matches, precision-recall curves, contact sheets."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from delf_ret.atomic import write_bytes_atomic  # noqa: E402
from delf_ret.images import shrink_to_max_side  # noqa: E402


def side_by_side(image_a: np.ndarray, image_b: np.ndarray) -> tuple[np.ndarray, int]:
  """Both RGB images on one canvas (A left, B right, top-aligned); returns (canvas, x offset of B)."""
  height = max(image_a.shape[0], image_b.shape[0])
  canvas = np.full((height, image_a.shape[1] + image_b.shape[1], 3), 255, np.uint8)
  canvas[: image_a.shape[0], : image_a.shape[1]] = image_a
  canvas[: image_b.shape[0], image_a.shape[1] :] = image_b
  return canvas, image_a.shape[1]


MAX_CANVAS_SIDE = 2400  # pixels: match pictures stay a few MB whatever the image sizes.


def draw_matches(
  path: str | os.PathLike,
  image_a: np.ndarray,
  image_b: np.ndarray,
  points_a: np.ndarray,
  points_b: np.ndarray,
  title: str,
  max_lines: int = 500,
  max_side: int = MAX_CANVAS_SIDE,
) -> None:
  """Writes a PNG with lines between corresponding (y, x) points [K, 2] of A and B.

  Both images are shrunk by one factor (points with them) so that the picture's
  longer side is at most ``max_side`` pixels: memory and file size stay bounded.
  """
  width = image_a.shape[1] + image_b.shape[1]
  height = max(image_a.shape[0], image_b.shape[0])
  factor = min(1.0, max_side / max(width, height))
  if factor < 1.0:
    image_a = shrink_to_max_side(image_a, max(1, round(max(image_a.shape[:2]) * factor)))[0]
    image_b = shrink_to_max_side(image_b, max(1, round(max(image_b.shape[:2]) * factor)))[0]
    points_a = np.asarray(points_a, np.float64) * factor
    points_b = np.asarray(points_b, np.float64) * factor
  canvas, offset = side_by_side(image_a, image_b)
  dpi = 100
  figure = plt.figure(figsize=(canvas.shape[1] / dpi, canvas.shape[0] / dpi + 0.5), dpi=dpi)
  axes = figure.add_axes((0, 0, 1, canvas.shape[0] / (canvas.shape[0] + 0.5 * dpi)))
  axes.imshow(canvas)
  axes.set_axis_off()
  step = max(1, len(points_a) // max_lines)
  colours = plt.cm.hsv(np.linspace(0, 1, max(1, len(points_a[::step])), endpoint=False))
  for (ya, xa), (yb, xb), colour in zip(points_a[::step], points_b[::step], colours):
    axes.plot([xa, xb + offset], [ya, yb], "-", color=colour, linewidth=0.8)
    axes.plot([xa, xb + offset], [ya, yb], "o", color=colour, markersize=2)
  figure.suptitle(title, fontsize=12, y=0.995, va="top")
  save_figure(figure, path, dpi)


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> None:
  """Writes a matplotlib figure as PNG atomically and closes it."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  plt.close(figure)
  write_bytes_atomic(path, buffer.getvalue())


def plot_precision_recall(
  path: str | os.PathLike, recall_levels: list[float], curves: dict[str, list[float]], title: str
) -> None:
  """Writes a PNG with one precision-recall curve (precision per recall level) per label."""
  figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=100)
  for label, precision in curves.items():
    if precision:
      axes.plot(recall_levels, precision, marker="o", markersize=3, label=label)
  axes.set(
    xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02), title=title
  )
  axes.grid(alpha=0.3)
  if any(curves.values()):
    axes.legend(loc="lower left")
  else:
    axes.text(0.5, 0.5, "no query has positives", ha="center", va="center")
  figure.tight_layout()
  save_figure(figure, path)


def fit_caption(text: str, width: int = 30) -> str:
  """``text`` with every line longer than ``width`` characters broken into lines that
  fit, after an underscore or a space where one lies in the line's second half, else at
  ``width``; a contact sheet's long image ids then stay above their own tile."""
  lines = []
  for line in text.split("\n"):
    while len(line) > width:
      cut = max(line.rfind("_", 0, width), line.rfind(" ", 0, width)) + 1
      cut = cut if cut > width // 2 else width
      lines.append(line[:cut].rstrip())
      line = line[cut:].lstrip()
    lines.append(line)
  return "\n".join(lines)


def draw_contact_sheet(
  path: str | os.PathLike,
  query: np.ndarray,
  results: list[np.ndarray],
  captions: list[str],
  query_caption: str = "query",
  columns: int = 5,
) -> None:
  """Writes a PNG grid: the query image first, then each result image with its caption."""
  tiles = [query, *results]
  labels = [query_caption, *captions]
  rows = -(-len(tiles) // columns)
  figure, axes = plt.subplots(
    rows, columns, figsize=(2.6 * columns, 2.6 * rows), dpi=100, squeeze=False
  )
  for cell, axis in enumerate(axes.flat):
    axis.set_axis_off()
    if cell < len(tiles):
      axis.imshow(tiles[cell])
      axis.set_title(
        fit_caption(labels[cell]), fontsize=8, color="tab:blue" if cell == 0 else "black"
      )
  figure.tight_layout()
  save_figure(figure, path)
