"""The interaction decomposition of modality-subset values: redundancy, uniqueness, synergy.

The math of `i2moe.attribution` (the dataset pass) and of the pipeline's per-sample attribution
(`pipeline_i2moe.py`), in one place. `v(S)` is the log-likelihood of the explained target from
modality subset S, `v(∅)` its log-likelihood under the label prior, `i(S) = v(S) − v(∅)`:

- the redundancy `R = min_k i(k)` is what every present modality already says;
- the rest, `i − R` on every subset that meets the present modalities, is split by its Möbius
  transform (Harsanyi dividends): its singletons are the uniquenesses `U_k = i(k) − R`, each
  coalition of two or more modalities gets a synergy;
- for two modalities: `U_a = i(a) − R`, `U_b = i(b) − R`, `S = i(ab) − i(a) − i(b) + R`, and the
  terms sum to `i(all)` for any M.

This file travels with saved models as Hub remote code (the pipeline imports it): it imports only
numpy and torch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


def all_subsets(num_modalities: int) -> torch.Tensor:
    """`(2^M − 1, M)` bool: every nonempty subset, row s − 1 is the subset whose bitmask is s
    (bit k set = modality k present); the last row is all modalities."""
    masks = torch.arange(1, 2 ** num_modalities)
    return (masks[:, None] >> torch.arange(num_modalities)) & 1 == 1


def bitmask(present: torch.Tensor) -> torch.Tensor:
    """`(..., M)` bool -> `(...)` long: the subset's bitmask (bit k = modality k)."""
    return (present.long() << torch.arange(present.shape[-1], device=present.device)).sum(-1)


def coalitions(num_modalities: int) -> list[tuple[int, ...]]:
    """Coalition of every bitmask 0 .. 2^M − 1, as a sorted tuple of modality indices."""
    return [tuple(k for k in range(num_modalities) if mask >> k & 1) for mask in range(2 ** num_modalities)]


@functools.lru_cache(maxsize=None)
def moebius_matrix(num_modalities: int) -> np.ndarray:
    """`(2^M, 2^M)` matrix A, indexed by bitmask, with `dividends = A @ values` the Möbius transform
    (Harsanyi dividends) of a game over M players: `A[T, S] = (−1)^(|T| − |S|)` for `S ⊆ T`, else 0."""
    masks = np.arange(2 ** num_modalities)
    subset = (masks[None, :] & ~masks[:, None]) == 0  # S ⊆ T
    sizes = np.array([bin(mask).count("1") for mask in masks])
    signs = (-1.0) ** (sizes[:, None] - sizes[None, :])
    return np.where(subset, signs, 0.0)


def component_names_for(modality_names) -> list[str]:
    """The attribution's terms: `uniqueness_<m>` per modality, `redundancy`, then the synergy
    of each coalition of two or more modalities (`synergy` when M = 2, else `synergy_<a>_<b>`...)."""
    names = list(modality_names)
    synergies = [coalition for coalition in coalitions(len(names)) if len(coalition) >= 2]
    synergy_names = ["synergy"] if len(names) == 2 else [
        "synergy_" + "_".join(names[k] for k in coalition) for coalition in synergies]
    return [*(f"uniqueness_{name}" for name in names), "redundancy", *synergy_names]


def decompose(information: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The attribution of subset information values.

    Args:
        information: `(..., 2^M)` `i(S) = v(S) − v(∅)` by bitmask (column 0, the empty set, is 0),
            already evaluated on the effective subsets `S ∩ present`.
        present: `(..., M)` bool, the modalities each row has (broadcast against `information`).

    Returns:
        `values` `(..., K)` in the order of `component_names_for` (they sum to `i(all)`), and the
        raw Harsanyi dividends `(..., 2^M − M − 1)` of every coalition of two or more modalities.
    """
    num_modalities = present.shape[-1]
    matrix = moebius_matrix(num_modalities)
    singletons = [1 << k for k in range(num_modalities)]
    higher = [mask for mask, coalition in enumerate(coalitions(num_modalities)) if len(coalition) >= 2]
    present = np.broadcast_to(present, information.shape[:-1] + (num_modalities,))
    # The redundancy: what every present modality already says (0 with fewer than two present).
    single = np.where(present, information[..., singletons], np.inf).min(-1)
    redundancy = np.where(present.sum(-1) >= 2, single, 0.0)
    # r(S) = R wherever S meets the present modalities; the rest of the game is split by Möbius.
    bits = np.arange(2 ** num_modalities)[:, None] >> np.arange(num_modalities) & 1  # (2^M, M)
    meets_present = (present[..., None, :] & (bits == 1)).any(-1)  # (..., 2^M)
    rest = information - redundancy[..., None] * meets_present
    dividends = rest @ matrix.T
    values = np.concatenate([dividends[..., singletons], redundancy[..., None], dividends[..., higher]], -1)
    return values, (information @ matrix.T)[..., higher]


def log_likelihood(logits: torch.Tensor, target: torch.Tensor, problem_type: str) -> torch.Tensor:
    """`(..., L)` log-likelihood of `target` under `logits` `(..., C)` (L = C for multi-label, else 1):
    the label's log-softmax (single-label), each label's Bernoulli log-likelihood (multi-label),
    `−‖y − ŷ‖² / 2` (regression)."""
    logits = logits.float()
    if problem_type == "single_label_classification":
        index = target.long().expand(logits.shape[:-1])[..., None]
        return logits.log_softmax(-1).gather(-1, index)
    if problem_type == "multi_label_classification":
        return -F.binary_cross_entropy_with_logits(logits, target.float().expand_as(logits), reduction="none")
    return -0.5 * (logits - target.float().expand_as(logits)).pow(2).sum(-1, keepdim=True)


def prior_log_likelihood(target: np.ndarray, prior: np.ndarray, problem_type: str) -> np.ndarray:
    """`(N, L)` `v(∅)`: the log-likelihood of the explained targets `(N,)` / `(N, L)` under the label prior."""
    if problem_type == "single_label_classification":
        return np.log(prior[target.astype(int)])[:, None]
    if problem_type == "multi_label_classification":
        return target * np.log(prior) + (1 - target) * np.log1p(-prior)
    return -0.5 * ((target - prior) ** 2).sum(-1, keepdims=True)


def check_prior(prior, problem_type: str, num_labels: int, caller: str) -> np.ndarray:
    """`prior` (the training label distribution) as a float array, or a `ValueError` naming `caller`:
    class frequencies or counts (single-label, normalised here), each label's frequency in (0, 1)
    (multi-label), the mean target (regression)."""
    prior = np.asarray(prior, dtype=float).reshape(-1)
    if prior.shape != (num_labels,):
        raise ValueError(f"{caller}: the label prior must hold {num_labels} values (one per label), got shape {prior.shape}")
    if problem_type == "single_label_classification":
        if (prior <= 0).any():
            raise ValueError(f"{caller}: the label prior must be the training label frequencies (or counts), all > 0; "
                             f"got {prior.tolist()}")
        return prior / prior.sum()
    if problem_type == "multi_label_classification" and ((prior <= 0) | (prior >= 1)).any():
        raise ValueError(f"{caller}: a multi-label prior holds each label's training frequency, in (0, 1); "
                         f"got {prior.tolist()}")
    return prior


__all__ = ["check_prior", "all_subsets", "bitmask", "coalitions", "component_names_for", "decompose", "log_likelihood",
           "moebius_matrix", "prior_log_likelihood"]
