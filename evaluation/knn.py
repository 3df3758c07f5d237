"""Exact (and optionally approximate) cosine k-nearest-neighbour search and voting.

Default backend: a blocked torch matrix product. The gallery is L2-normalised once; the queries
are processed in blocks of ``block_size`` rows, so the extra memory is the normalised gallery
copy plus one ``(block, G)`` similarity buffer (1024 x 40,091 fp32 = 157 MB at NTU-60 size;
1024 rows keep the matrix product at full BLAS speed, and the row max over the buffer costs
about 1 % of the product). Queries are *not* normalised before the product: a positive scale per query
does not change its ranking, so only the k kept similarities are divided by the query norm.
For k = 1 a ``max`` replaces ``topk`` (one pass, no sort).

Options: ``faiss-flat`` (exact, ``IndexFlatIP``) and the approximate ``faiss-ivf`` /
``faiss-hnsw`` indexes for galleries of millions.

Voting (k > 1): majority vote among the k neighbours; a tie in counts is broken by the highest
summed cosine similarity of the tied classes (then by the lowest class index).
"""
from __future__ import annotations

import numpy as np
import torch

from evaluation.checks import require_finite
from progress import progress_bar

BACKENDS = ("torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x (N, D)`` scaled to unit L2 norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def _check_pair(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> None:
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ValueError(f"queries and gallery must be 2-D (N, D); got {tuple(queries.shape)} "
                         f"and {tuple(gallery.shape)}")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"feature dims differ: queries D={queries.shape[1]}, "
                         f"gallery D={gallery.shape[1]}")
    if not 1 <= k <= gallery.shape[0]:
        raise ValueError(f"k must be in [1, {gallery.shape[0]}] (gallery size), got {k}")


def torch_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int = 1,
               block_size: int = 1024, gallery_normalized: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k by a blocked matrix product.

    queries (Q, D), gallery (G, D) float -> (similarities (Q, k) float32 descending,
    gallery indices (Q, k) int64). Extra memory: one (block_size, G) buffer. A progress bar
    of the blocks on a terminal.
    """
    _check_pair(queries, gallery, k)
    queries = queries.float()
    gallery_t = (gallery.float() if gallery_normalized else l2_normalize(gallery.float())).T
    num_q = queries.shape[0]
    sims = torch.empty(num_q, k, dtype=torch.float32)
    idx = torch.empty(num_q, k, dtype=torch.int64)
    buf = torch.empty(min(block_size, num_q), gallery_t.shape[1], dtype=torch.float32,
                      device=queries.device)
    on_cpu = queries.device.type == "cpu"
    if on_cpu:  # numpy's OpenBLAS sgemm: 1.4-3x torch's MKL on AMD CPUs, on par on Intel
        gallery_np, buf_np = gallery_t.numpy(), buf.numpy()
    for start in progress_bar(range(0, num_q, block_size), desc="knn", unit="block", leave=False):
        block = queries[start:start + block_size]
        if on_cpu:
            np.matmul(block.numpy(), gallery_np, out=buf_np[:block.shape[0]])
            scores = buf[:block.shape[0]]
        else:
            scores = torch.mm(block, gallery_t, out=buf[:block.shape[0]])
        if k == 1:
            best, where = scores.max(dim=1, keepdim=True)
        else:
            best, where = scores.topk(k, dim=1)
        norms = block.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims[start:start + block.shape[0]] = (best / norms).cpu()
        idx[start:start + block.shape[0]] = where.cpu()
    return sims, idx


def faiss_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int = 1, index: str = "flat",
               nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k with faiss: ``index`` in ``flat`` (exact IndexFlatIP), ``ivf`` (IVF-Flat,
    ``nlist`` lists, default ~4 sqrt(G), searching ``nprobe``), ``hnsw`` (HNSW-Flat, ``hnsw_m``
    links). Shapes as ``torch_topk``. ivf/hnsw are approximate."""
    import faiss

    _check_pair(queries, gallery, k)
    q = np.ascontiguousarray(queries.detach().cpu().float().numpy())
    g = np.ascontiguousarray(gallery.detach().cpu().float().numpy())
    q, g = q.copy(), g.copy()
    faiss.normalize_L2(q)
    faiss.normalize_L2(g)
    dim = g.shape[1]
    if index == "flat":
        searcher = faiss.IndexFlatIP(dim)
    elif index == "ivf":
        lists = nlist or max(1, min(g.shape[0] // 39, int(4 * np.sqrt(g.shape[0]))))
        searcher = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists,
                                      faiss.METRIC_INNER_PRODUCT)
        searcher.cp.seed = seed
        searcher.train(g)
        searcher.nprobe = min(nprobe, lists)
    elif index == "hnsw":
        searcher = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown faiss index {index!r}; expected flat, ivf or hnsw")
    searcher.add(g)
    sims, idx = searcher.search(q, k)
    return torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64))


def search(queries: torch.Tensor, gallery: torch.Tensor, k: int = 1, backend: str = "torch",
           block_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to a backend in ``BACKENDS``; returns (sims (Q, k), indices (Q, k))."""
    if backend == "torch":
        return torch_topk(queries, gallery, k, block_size=block_size)
    if backend.startswith("faiss-") and backend in BACKENDS:
        return faiss_topk(queries, gallery, k, index=backend[len("faiss-"):])
    raise ValueError(f"unknown search backend {backend!r}; expected one of {BACKENDS}")


def vote(neighbour_labels: torch.Tensor, neighbour_sims: torch.Tensor,
         num_classes: int) -> torch.Tensor:
    """Majority vote. neighbour_labels (Q, k) int64, neighbour_sims (Q, k) -> predictions (Q,).

    Ties in the count go to the class with the highest summed similarity."""
    num_q = neighbour_labels.shape[0]
    counts = torch.zeros(num_q, num_classes).scatter_add_(
        1, neighbour_labels, torch.ones_like(neighbour_sims, dtype=torch.float32))
    sums = torch.zeros(num_q, num_classes).scatter_add_(1, neighbour_labels,
                                                         neighbour_sims.float())
    is_top = counts == counts.max(dim=1, keepdim=True).values
    return sums.masked_fill(~is_top, float("-inf")).argmax(dim=1)


def knn_evaluate(query_feats: torch.Tensor, query_labels: torch.Tensor,
                 gallery_feats: torch.Tensor, gallery_labels: torch.Tensor, k: int = 1,
                 backend: str = "torch", block_size: int = 1024, query_names=None,
                 gallery_names=None) -> dict:
    """KNN classification of queries against a labelled gallery.

    Non-finite features are refused (NonFiniteError naming the first samples: ``*_names``
    (N,), or positions when None): a NaN query would still get a neighbour and a vote.
    Returns dict: ``pred`` (Q,) int64, ``neighbours`` (Q, k) gallery indices, ``sims`` (Q, k),
    ``top1`` (accuracy of the vote, %) and ``recall_at_k`` (% of queries with at least one
    same-class sample among their k neighbours)."""
    require_finite(query_feats, "KNN queries", query_names)
    require_finite(gallery_feats, "KNN gallery", gallery_names)
    num_classes = int(max(gallery_labels.max(), query_labels.max())) + 1
    sims, nbrs = search(query_feats, gallery_feats, k, backend=backend, block_size=block_size)
    nbr_labels = gallery_labels.long()[nbrs]
    pred = vote(nbr_labels, sims, num_classes)
    truth = query_labels.long()
    return {
        "pred": pred,
        "neighbours": nbrs,
        "sims": sims,
        "top1": 100.0 * (pred == truth).float().mean().item(),
        "recall_at_k": 100.0 * (nbr_labels == truth[:, None]).any(dim=1).float().mean().item(),
    }
