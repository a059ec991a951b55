"""How good a rain gate's scores are: its decision threshold, calibration temperature and
classification metrics, all computed from validation scores (no model needed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def choose_threshold(probabilities: torch.Tensor, is_rainy: torch.Tensor) -> float:
    """The threshold with the best validation accuracy (ties: the one nearest 0.5).

    Candidates are the midpoints between consecutive sorted probabilities, so the result separates
    the validation scores as well as any threshold can.
    """
    probabilities, is_rainy = probabilities.double().flatten(), is_rainy.bool().flatten()
    ordered = torch.sort(probabilities).values
    candidates = torch.cat((ordered[:1] - 1e-6, (ordered[1:] + ordered[:-1]) / 2, ordered[-1:] + 1e-6))
    accuracy = ((probabilities[None, :] >= candidates[:, None]) == is_rainy[None, :]).double().mean(1)
    best = accuracy.max()
    tied = candidates[accuracy == best]
    return float(tied[torch.argmin((tied - 0.5).abs())])


def classification_metrics(probabilities: torch.Tensor, is_rainy: torch.Tensor, threshold: float) -> dict:
    """Accuracy, precision and recall of "rainy", and the confusion counts."""
    predicted, actual = probabilities >= threshold, is_rainy.bool()
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    tn = int((~predicted & ~actual).sum())
    total = max(tp + fp + fn + tn, 1)
    return {
        "accuracy": (tp + tn) / total,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "confusion": {"rainy_as_rainy": tp, "clean_as_rainy": fp, "rainy_as_clean": fn, "clean_as_clean": tn},
    }


def fit_temperature(logits: torch.Tensor, is_rainy: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T in 0.02-50 minimising the validation log loss of
    sigmoid(logit / T), on a log-spaced grid (deterministic; a one-parameter fit needs nothing more)."""
    logits, target = logits.double().flatten(), is_rainy.double().flatten()
    temperatures = torch.logspace(-1.7, 1.7, 341, dtype=torch.float64)
    losses = torch.stack([F.binary_cross_entropy_with_logits(logits / t, target) for t in temperatures])
    return float(temperatures[torch.argmin(losses)])
