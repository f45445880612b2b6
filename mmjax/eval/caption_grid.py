"""A picture of generated captions: images with their caption and references.

  caption_grid.png   up to `max_images` images in a grid, each with its
                     generated caption (bold) and its first references
                     (grey) wrapped beneath it

Drawn like the retrieval reports (`mmjax.eval.reports`): matplotlib's Agg
backend, saved through `mmjax.paths` (local or gs://), the figure closed.
The layout is computed in inches rather than left to tight_layout, so the
picture's size depends only on the number of images, the columns and the
longest wrapped text: CELL_INCHES * DPI pixels per column.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from mmjax import paths
from mmjax.eval import reports

__all__ = ["plot_caption_grid", "CELL_INCHES", "DPI"]

CELL_INCHES = 2.4  # width of one column, and the box each image is fitted into
DPI = 110  # as the other reports
_FONT_PT = 7
_LINE_INCHES = _FONT_PT * 1.25 / 72
_WRAP_CHARS = 38  # bold 7 pt text of this many characters fills CELL_INCHES
_MAX_CAPTION_LINES = 3
_MAX_REFERENCE_LINES = 2
_PAD_INCHES = 0.12


def _wrap(text: str, max_lines: int) -> list[str]:
  return textwrap.wrap(text, _WRAP_CHARS, max_lines=max_lines, placeholder=" ...") or [""]


def plot_caption_grid(images, generated: list[str], references: list[list[str]], path: str,
                      cols: int = 4, max_images: int = 16, title: str | None = None,
                      num_references: int = 2) -> str:
  """Draws images with their generated and reference captions into a PNG.

  Args:
    images: [N, H, W, 3] (or [N, H, W, 1]) uint8.
    generated: N generated captions, generated[k] for images[k]; an empty one
      is drawn as "(empty)".
    references: N lists of reference captions; the first `num_references` of
      each are drawn.
    path: the PNG to write (local or gs://).
    cols: images per row (fewer if there are fewer images).
    max_images: draw only the first this many.
    title: a line above the grid.
    num_references: how many references to draw per image.

  Returns:
    `path`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 3] or [N, H, W, 1]; got shape {images.shape}.")
  if not len(images) == len(generated) == len(references):
    raise ValueError(f"{len(images)} images, {len(generated)} generated captions and "
                     f"{len(references)} reference lists; give one of each per image.")
  n = min(len(images), max_images)
  if n == 0:
    raise ValueError("no images to draw.")
  cols = max(1, min(cols, n))
  rows = math.ceil(n / cols)

  texts = []  # per image: (bold lines, grey lines)
  for k in range(n):
    bold = _wrap(generated[k] if generated[k].strip() else "(empty)", _MAX_CAPTION_LINES)
    grey = [line for ref in list(references[k])[:num_references]
            for line in _wrap("ref: " + ref, _MAX_REFERENCE_LINES)]
    texts.append((bold, grey))
  # Every row gets room for the longest text, so the grid stays regular; the
  # image box takes the images' aspect ratio (at most square), so the text
  # starts right under the picture.
  text_h = _PAD_INCHES + _LINE_INCHES * max(len(b) + len(g) for b, g in texts)
  box_w = CELL_INCHES - 2 * _PAD_INCHES
  box_h = box_w * min(1.0, images.shape[1] / images.shape[2])
  row_h = box_h + text_h + _PAD_INCHES
  title_h = 0.35 if title else 0.0
  fig_w, fig_h = cols * CELL_INCHES, rows * row_h + title_h + _PAD_INCHES

  plt = reports.pyplot()
  fig = plt.figure(figsize=(fig_w, fig_h))
  if title:
    fig.text(0.5, 1 - 0.2 / fig_h, title, ha="center", va="center", fontsize=9)
  for k, (bold, grey) in enumerate(texts):
    row, col = divmod(k, cols)
    top = fig_h - title_h - _PAD_INCHES - row * row_h  # inches from the bottom
    left = col * CELL_INCHES + _PAD_INCHES
    ax = fig.add_axes([left / fig_w, (top - box_h) / fig_h, box_w / fig_w, box_h / fig_h])
    ax.set_anchor("N")  # a taller-than-wide image is centred in the box's top
    image = images[k]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray",
              interpolation="nearest")
    ax.set_axis_off()
    # One text per line, placed in inches: matplotlib's own line spacing
    # differs between bold and regular, and the grey must follow the bold.
    y = top - box_h - _PAD_INCHES / 2
    for lines, style in ((bold, {"fontweight": "bold"}), (grey, {"color": "dimgray"})):
      for line in lines:
        fig.text(left / fig_w, y / fig_h, line, va="top", ha="left", fontsize=_FONT_PT,
                 **style)
        y -= _LINE_INCHES
  paths.save_figure(fig, path, dpi=DPI)
  plt.close(fig)
  return path
