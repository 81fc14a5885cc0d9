"""A DLRM-style search/recommendation ranker trained on a deterministic synthetic click log.

Each session is one user query with 20 candidate items; the model scores all 20 in one batch, as a
ranking service would. Clicks come from a hidden ground truth (user x item affinity, item popularity,
text match, position-free), sampled with a fixed seed. Metric: NDCG@10 of the observed clicks on
held-out sessions (higher is better); AUC is reported alongside.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from edgekit_models._train import cached_state, fit
from torch import nn

from edgekit.bundle import ModelBundle

CARDINALITIES = (2000, 5000, 64, 16)  # user, item, item category, context (device/locale)
N_DENSE = 8
CANDIDATES = 20


class DLRM(nn.Module):
    """Bottom MLP for dense features, embedding tables for sparse ones, pairwise dot interaction, top MLP."""

    def __init__(self, emb_dim: int = 16, bottom: tuple[int, ...] = (64,), top: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, emb_dim) for n in CARDINALITIES)
        layers: list[nn.Module] = []
        width = N_DENSE
        for h in (*bottom, emb_dim):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.bottom = nn.Sequential(*layers)
        n_vec = len(CARDINALITIES) + 1
        self.register_buffer("tri", torch.triu_indices(n_vec, n_vec, offset=1), persistent=False)
        width = emb_dim + n_vec * (n_vec - 1) // 2
        layers = []
        for h in top:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.top = nn.Sequential(*layers)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.stack([x] + [emb(sparse[:, i]) for i, emb in enumerate(self.embeddings)], dim=1)
        inter = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.tri[0], self.tri[1]]
        return self.top(torch.cat([x, inter], dim=1)).squeeze(1)


def click_log(n_sessions: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dense [S*20, 8] float32, sparse [S*20, 4] int64, clicks [S*20] float32), sessions contiguous."""
    world = np.random.default_rng(1234)  # the hidden ground truth is the same for every split
    k = 8
    users = world.normal(0, 1, (CARDINALITIES[0], k))
    items = world.normal(0, 1, (CARDINALITIES[1], k))
    item_cat = world.integers(0, CARDINALITIES[2], CARDINALITIES[1])
    cat_bias = world.normal(0, 0.5, CARDINALITIES[2])
    popularity = world.gamma(2.0, 1.0, CARDINALITIES[1])
    price = world.lognormal(3.0, 0.7, CARDINALITIES[1])
    ctx_bias = world.normal(0, 0.3, CARDINALITIES[3])
    rng = np.random.default_rng(seed)
    user = np.repeat(rng.integers(0, CARDINALITIES[0], n_sessions), CANDIDATES)
    ctx = np.repeat(rng.integers(0, CARDINALITIES[3], n_sessions), CANDIDATES)
    item = rng.integers(0, CARDINALITIES[1], n_sessions * CANDIDATES)
    affinity = (users[user] * items[item]).sum(1) / np.sqrt(k)
    text_match = affinity + rng.normal(0, 1.0, len(item))  # a noisy retrieval score the ranker can see
    logit = 1.2 * affinity + 0.3 * np.log1p(popularity[item]) + cat_bias[item_cat[item]] + ctx_bias[ctx] - 2.0
    logit -= 0.2 * np.log(price[item]) - 0.6
    clicks = (rng.random(len(item)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = np.stack(
        [
            text_match,
            np.log1p(popularity[item]),
            np.log(price[item]),
            rng.random(len(item)),  # freshness
            np.repeat(rng.gamma(2.0, 1.0, n_sessions), CANDIDATES),  # user activity
            ctx_bias[ctx] + rng.normal(0, 0.1, len(item)),
            np.tile(np.arange(CANDIDATES) / CANDIDATES, n_sessions),  # retrieval rank
            rng.normal(0, 1, len(item)),  # an uninformative feature, as real logs have
        ],
        axis=1,
    ).astype(np.float32)
    sparse = np.stack([user, item, item_cat[item], ctx], axis=1).astype(np.int64)
    return dense, sparse, clicks


def ndcg_at_k(scores: np.ndarray, clicks: np.ndarray, *, k: int = 10, group: int = CANDIDATES) -> float:
    """Mean NDCG@k over sessions with at least one click."""
    s = scores.reshape(-1, group)
    c = clicks.reshape(-1, group)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    dcg = (np.take_along_axis(c, order, axis=1) * discounts).sum(1)
    ideal = (-np.sort(-c, axis=1)[:, :k] * discounts).sum(1)
    has = ideal > 0
    return float((dcg[has] / ideal[has]).mean())


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def build_student(emb_dim: int = 16, bottom: int = 32, top1: int = 64, top2: int = 32) -> nn.Module:
    """A narrower DLRM for distillation recipes (same inputs, half-width MLPs)."""
    return DLRM(emb_dim=emb_dim, bottom=(bottom,), top=(top1, top2))


def load(*, cache_dir: Path) -> ModelBundle:
    d_tr, s_tr, y_tr = click_log(6000, seed=1)
    d_te, s_te, y_te = click_log(600, seed=2)

    def batches(epoch: int, batch: int = 512):
        order = np.random.default_rng(epoch).permutation(len(y_tr))
        return [
            ((torch.from_numpy(d_tr[i]), torch.from_numpy(s_tr[i])), torch.from_numpy(y_tr[i]))
            for i in np.array_split(order, len(order) // batch)
        ]

    model = cached_state(
        DLRM(),
        key="recommender",
        cache_dir=cache_dir,
        train=lambda m: fit(m, batches, nn.functional.binary_cross_entropy_with_logits, epochs=6, lr=3e-3),
    )
    epochs = itertools.count(1000)

    def train_batches():
        for (dense, sparse), target in batches(next(epochs)):
            yield {"dense": dense.numpy(), "sparse": sparse.numpy()}, target.numpy()

    per_session = [
        {"dense": d_te[i : i + CANDIDATES], "sparse": s_te[i : i + CANDIDATES]} for i in range(0, len(y_te), CANDIDATES)
    ]
    calib = [{"dense": d_tr[i : i + CANDIDATES], "sparse": s_tr[i : i + CANDIDATES]} for i in range(0, 20 * 128, 20)]
    return ModelBundle(
        name="recommender",
        task="ranking",
        module=model,
        input_names=["dense", "sparse"],
        output_names=["score"],
        dynamic_axes={"dense": {0: "candidates"}, "sparse": {0: "candidates"}, "score": {0: "candidates"}},
        example=per_session[0],
        calibration=calib,
        eval_feeds=per_session,
        metric_name="ndcg@10",
        score=lambda scores: ndcg_at_k(scores, y_te),
        extra_metrics=lambda scores: {"auc": auc(scores, y_te)},
        train_batches=train_batches,
        student={"student": "edgekit_models.recommender:build_student", "epochs": 4},
        description="DLRM ranker (4 embedding tables, bottom/top MLP, dot interaction); 600 held-out sessions x 20",
        preprocessing={
            "dense": f"[candidates, {N_DENSE}] float32, standardised numeric features",
            "sparse": "[candidates, 4] int64, one category id per embedding table",
        },
        postprocessing={"score": "click logit per candidate; sort candidates by it, descending"},
    )
