"""Label-noise injection that reports exactly which ids were flipped."""
from __future__ import annotations

import numpy as np

from repro.data.core import Dataset
from repro.errors import InvalidParameterError, UnknownNameError


def flip_labels(ds: Dataset, fraction: float, mode: str = "uniform", seed: int = 0,
                transition=None) -> tuple[Dataset, np.ndarray]:
    """Flip the labels of a fraction of the examples.

    Args:
        ds: the dataset (left unchanged; a copy with new labels is returned).
        fraction: share of examples to flip, in [0, 1).
        mode: ``"uniform"``: ``round(fraction * N)`` examples chosen at random get a label drawn
            uniformly from the *other* classes. ``"class_conditional"``: in every class ``c``,
            ``round(fraction * N_c)`` examples are flipped to ``transition[c]`` (default: the next
            class, ``(c + 1) % K``, i.e. pair flipping), or, if ``transition`` is a KxK matrix of
            row-stochastic probabilities with a zero diagonal, to a class drawn from row ``c``.
        seed: seed of the choice.
        transition: see ``mode``.

    Returns:
        ``(noisy_dataset, flipped_ids)``; every id in ``flipped_ids`` has a label different from
        before and no other label changed.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)) \
            or not 0 <= fraction < 1:
        raise InvalidParameterError(f"fraction must be a number in [0, 1), got {fraction!r}")
    k = ds.num_classes
    if k < 2:
        raise ValueError("label noise needs at least two classes")
    rng = np.random.default_rng(seed)
    labels = ds.labels.copy()
    if mode == "uniform":
        chosen = rng.choice(len(ds), size=int(round(fraction * len(ds))), replace=False)
        shift = rng.integers(1, k, size=len(chosen))  # never 0: the new label always differs
        labels[chosen] = (labels[chosen] + shift) % k
    elif mode == "class_conditional":
        matrix = None
        if transition is None:
            target = [(c + 1) % k for c in range(k)]
        elif np.ndim(transition) == 2:
            matrix = np.asarray(transition, dtype=float)
            if matrix.shape != (k, k) or np.any(np.diag(matrix) != 0) or not np.allclose(matrix.sum(1), 1):
                raise ValueError("transition matrix must be KxK, row-stochastic, with a zero diagonal")
        else:
            target = list(transition)
            if len(target) != k or any(t == c or not 0 <= t < k for c, t in enumerate(target)):
                raise ValueError(f"transition must map each of the {k} classes to another class")
        chosen_parts = []
        for c in range(k):
            members = np.flatnonzero(ds.labels == c)
            pick = rng.choice(members, size=int(round(fraction * len(members))), replace=False)
            labels[pick] = (rng.choice(k, size=len(pick), p=matrix[c]) if matrix is not None
                            else target[c])
            chosen_parts.append(pick)
        chosen = np.concatenate(chosen_parts)
    else:
        raise UnknownNameError(f"unknown noise mode {mode!r}; use 'uniform' or 'class_conditional'")
    flipped_ids = np.sort(ds.ids[chosen])
    return ds.with_labels(labels), flipped_ids
