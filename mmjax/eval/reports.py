"""Pictures of an evaluation, saved in the workdir.

  recall_curves.png    recall@K for K = 1..100 (log axis), both directions
  retrieval_grid.png   for a few caption queries, the query and its top-5 images
                       (the true image framed in green)
  retrieval_grid_<m>_image.png   the same for queries of another modality m
                       (sounds drawn as spectrograms), e.g. audio -> image
  embeddings_pca.png   image and text embeddings of the test split projected on
                       their first two principal components, by modality

All take embeddings already computed (`mmjax.eval.evaluator.embed`), so a
report costs no extra model calls.
"""

import textwrap

import numpy as np

from mmjax import paths
from mmjax.eval import retrieval


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), imported
  when a report is drawn rather than with this module."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def recall_curve(ranks: np.ndarray, max_k: int) -> tuple[np.ndarray, np.ndarray]:
  """ranks [Q] (1-based) -> (K = 1..max_k, recall@K), recall@K = mean(rank <= K)."""
  ks = np.arange(1, max_k + 1)
  counts = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)
  return ks, np.cumsum(counts[1:max_k + 1]) / len(ranks)


def plot_recall_curves(i2t_ranks, t2i_ranks, path: str, max_k: int = 100) -> str:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for ranks, label in ((i2t_ranks, "image -> text"), (t2i_ranks, "text -> image")):
    ks, recall = recall_curve(np.asarray(ranks), max_k)
    ax.plot(ks, recall, label=label)
  ax.set(xscale="log", xlabel="K", ylabel="recall@K", ylim=(0, 1.02),
         title=f"test retrieval ({len(i2t_ranks)} images, {len(t2i_ranks)} captions)")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def grid_hits(image_emb, text_emb, queries: int = 6, k: int = 5, seed: int = 0):
  """(chosen caption rows [Q], their top-k image indices [Q, k]) for the grid.

  The top-k runs sharded over all devices: with several processes, every
  process calls this (write_all does), not only the one that draws.
  """
  m = len(text_emb)
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.choice(m, size=min(queries, m), replace=False))
  _, top = retrieval.top_k(text_emb[chosen], image_emb, min(k, len(image_emb)))
  return chosen, np.asarray(top)


def _grid(draw_query, chosen, top, images, is_hit, path: str, title: str) -> str:
  """Rows: a query (drawn by draw_query(ax, q)) and the images of its hits.

  chosen [Q] query rows; top [Q, k] image indices; is_hit(q, idx) -> bool.
  """
  plt = pyplot()
  k = top.shape[1]
  fig, axes = plt.subplots(len(chosen), k + 1, figsize=(1.6 * (k + 1) + 2.2, 1.7 * len(chosen)),
                           squeeze=False, gridspec_kw={"width_ratios": [2.2] + [1] * k})
  for row, (q, hits) in enumerate(zip(chosen, top)):
    draw_query(axes[row][0], q)
    for col, idx in enumerate(hits, start=1):
      ax = axes[row][col]
      ax.imshow(images[idx], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      hit = is_hit(q, idx)
      for spine in ax.spines.values():
        spine.set_edgecolor("tab:green" if hit else "lightgray")
        spine.set_linewidth(3 if hit else 1)
      if row == 0:
        ax.set_title(f"#{col}", fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def plot_retrieval_grid(images, image_emb, text_emb, captions, text_to_image, path: str,
                        queries: int = 6, k: int = 5, seed: int = 0, hits=None) -> str:
  """Rows: a caption (spread evenly over the split) and its top-k images.

  images: [N, H, W, 3] uint8; image_emb [N, D], text_emb [M, D]; captions: M
  strings; text_to_image [M]; hits: `grid_hits`' result if already computed
  (by every process, when several run).
  """
  chosen, top = hits if hits is not None else grid_hits(image_emb, text_emb, queries, k, seed)

  def draw(ax, q):
    ax.axis("off")
    ax.text(0, 0.5, "\n".join(textwrap.wrap(captions[q], 28)), va="center", fontsize=8)

  return _grid(draw, chosen, top, images, lambda q, idx: idx == text_to_image[q], path,
               f"top-{top.shape[1]} images per caption (true image framed green)")


def spectrogram_db(wave: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
  """float [N] -> [frames, n_fft // 2 + 1] power in dB (Hann frames, 1e-10 floor),
  for drawing a clip whatever its sample rate."""
  wave = np.asarray(wave, np.float64)
  wave = np.pad(wave, (0, max(0, n_fft - len(wave))))  # at least one frame
  frames = 1 + (len(wave) - n_fft) // hop
  x = wave[np.arange(n_fft)[None] + hop * np.arange(frames)[:, None]]
  power = np.abs(np.fft.rfft(x * np.hanning(n_fft), axis=-1)) ** 2
  return 10 * np.log10(np.maximum(power, 1e-10))


def plot_query_grid(queries, images, query_emb, image_emb, path: str, modality: str,
                    n: int = 6, k: int = 5, seed: int = 0, hits=None) -> str:
  """Rows: an item of another modality and its top-k images, the true one
  (same row index) framed green. queries: [N, ...], one per image: waveforms
  [N, samples] are drawn as spectrograms, images [N, H, W, C] as they are.
  hits: `grid_hits(image_emb, query_emb, n, k, seed)` if already computed."""
  chosen, top = hits if hits is not None else grid_hits(image_emb, query_emb, n, k, seed)

  def draw(ax, q):
    ax.set_xticks([])
    ax.set_yticks([])
    item = np.asarray(queries[q])
    if item.ndim == 1:
      ax.imshow(spectrogram_db(item).T, origin="lower", aspect="auto", cmap="magma",
                vmin=-100)
    else:
      ax.imshow(item[..., 0] if item.shape[-1] == 1 else item, cmap="gray",
                interpolation="nearest")
    ax.set_ylabel(f"{modality} {q}", fontsize=7)

  return _grid(draw, chosen, top, images, lambda q, idx: idx == q, path,
               f"top-{top.shape[1]} images per {modality} query (true image framed green)")


def pca_2d(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, 2]: the projection on the first two principal components."""
  x = np.asarray(x, np.float64)
  centred = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def plot_embeddings_pca(image_emb, text_emb, path: str, max_points: int = 2000,
                        seed: int = 0) -> str:
  """Both modalities projected together, so the gap between them shows."""
  plt = pyplot()
  rng = np.random.default_rng(seed)
  img = image_emb[rng.permutation(len(image_emb))[:max_points]]
  txt = text_emb[rng.permutation(len(text_emb))[:max_points]]
  xy = pca_2d(np.concatenate([img, txt]))
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.scatter(*xy[:len(img)].T, s=4, alpha=0.5, label=f"images ({len(img)})")
  ax.scatter(*xy[len(img):].T, s=4, alpha=0.5, label=f"captions ({len(txt)})")
  ax.set(xlabel="PC 1", ylabel="PC 2", title="test embeddings, PCA")
  ax.legend(markerscale=3)
  fig.tight_layout()
  paths.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def write_all(workdir: str, data: dict, image_emb, text_emb, captions,
              write: bool | None = None) -> list[str]:
  """The three reports for one evaluation; returns their paths.

  Call it on every process: the ranks are computed sharded over all devices
  (a collective every process must join); only where `write` is true (the
  primary process; None: process 0) are the plots drawn and saved.
  """
  if write is None:
    import jax  # pylint: disable=g-import-not-at-top
    write = jax.process_index() == 0
  i2t, t2i = retrieval.retrieval_ranks(image_emb, text_emb, data["text_to_image"])
  hits = grid_hits(image_emb, text_emb)
  if not write:
    return []
  return [
      plot_recall_curves(i2t, t2i, paths.join(workdir, "recall_curves.png")),
      plot_retrieval_grid(data["image"], image_emb, text_emb, captions,
                          data["text_to_image"], paths.join(workdir, "retrieval_grid.png"),
                          hits=hits),
      plot_embeddings_pca(image_emb, text_emb, paths.join(workdir, "embeddings_pca.png")),
  ]
