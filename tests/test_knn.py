"""Exact cosine KNN: torch blocked search vs faiss IndexFlatIP vs sklearn brute force."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from evaluation.knn import faiss_topk, knn_evaluate, l2_normalize, torch_topk, vote


def planted(num_g=600, num_q=200, dim=32, classes=6, seed=0):
    """Class centres plus noise: random (untied) similarities with real class structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    gl = rng.integers(0, classes, num_g)
    ql = rng.integers(0, classes, num_q)
    g = centres[gl] + 1.5 * rng.normal(size=(num_g, dim))
    q = centres[ql] + 1.5 * rng.normal(size=(num_q, dim))
    # unnormalised, with varied scales: cosine must not depend on the norms
    g *= rng.uniform(0.1, 10, size=(num_g, 1))
    q *= rng.uniform(0.1, 10, size=(num_q, 1))
    return (torch.tensor(q, dtype=torch.float32), torch.tensor(ql),
            torch.tensor(g, dtype=torch.float32), torch.tensor(gl))


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("block", [7, 1024])
def test_torch_matches_faiss_and_sklearn(k, block):
    q, _, g, _ = planted()
    sims, idx = torch_topk(q, g, k, block_size=block)
    f_sims, f_idx = faiss_topk(q, g, k, index="flat")
    nn_ = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(g.numpy())
    s_dist, s_idx = nn_.kneighbors(q.numpy())
    assert torch.equal(idx, f_idx)
    assert np.array_equal(idx.numpy(), s_idx)
    assert torch.allclose(sims, f_sims, atol=1e-5)
    assert np.allclose(sims.numpy(), 1 - s_dist, atol=1e-5)
    # and the direct definition
    ref = l2_normalize(q) @ l2_normalize(g).T
    assert torch.allclose(sims, ref.topk(k, dim=1).values, atol=1e-5)


def test_knn_predictions_identical_across_backends_and_sklearn_classifier():
    from sklearn.neighbors import KNeighborsClassifier
    q, ql, g, gl = planted(seed=1)
    ours = knn_evaluate(q, ql, g, gl, k=1)
    faiss_res = knn_evaluate(q, ql, g, gl, k=1, backend="faiss-flat")
    clf = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
    sk_pred = clf.fit(g.numpy(), gl.numpy()).predict(q.numpy())
    assert torch.equal(ours["pred"], faiss_res["pred"])
    assert np.array_equal(ours["pred"].numpy(), sk_pred)
    assert ours["top1"] == pytest.approx(100 * (sk_pred == ql.numpy()).mean())
    assert ours["top1"] > 60  # the planted structure is found (chance is ~17 %)


def test_approximate_indexes_agree_on_easy_data():
    q, ql, g, gl = planted(num_g=800, seed=2)
    exact = knn_evaluate(q, ql, g, gl, k=1)
    for backend in ("faiss-hnsw", "faiss-ivf"):
        approx = knn_evaluate(q, ql, g, gl, k=1, backend=backend)
        agree = (approx["neighbours"] == exact["neighbours"]).float().mean().item()
        assert agree > 0.8, backend


def test_vote_majority_and_tie_break_by_summed_similarity():
    labels = torch.tensor([[2, 2, 0, 1, 1],     # 2 and 1 tie on count, 1 has higher sum
                           [0, 3, 3, 3, 0],     # clear majority 3
                           [4, 1, 1, 4, 0]])    # 4 and 1 tie, 4 has higher sum
    sims = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.6],
                         [0.99, 0.5, 0.4, 0.3, 0.98],
                         [0.9, 0.8, 0.2, 0.5, 0.85]])
    assert vote(labels, sims, 5).tolist() == [1, 3, 4]


def test_recall_at_k_hand_computed():
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    gl = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    ql = torch.tensor([1, 1])
    res = knn_evaluate(q, ql, g, gl, k=2)
    # query 0: neighbours 0 (label 0), 1 (label 1) -> recall hit; tie 1-1, sum picks 0
    # query 1: neighbours 2 (label 1), 3 (label 0) -> hit; tie, sum picks 1
    assert res["neighbours"].tolist() == [[0, 1], [2, 3]]
    assert res["pred"].tolist() == [0, 1]
    assert res["top1"] == 50.0 and res["recall_at_k"] == 100.0


def test_bad_inputs_raise():
    q, _, g, _ = planted(num_g=10, num_q=3)
    with pytest.raises(ValueError, match="feature dims"):
        torch_topk(q[:, :5], g, 1)
    with pytest.raises(ValueError, match="k must be"):
        torch_topk(q, g, 11)
    with pytest.raises(ValueError, match="unknown search backend"):
        knn_evaluate(q, torch.zeros(3, dtype=torch.long), g,
                     torch.zeros(10, dtype=torch.long), backend="annoy")
