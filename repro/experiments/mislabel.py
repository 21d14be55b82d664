"""Mislabel detection protocol (TracIn paper, section on self-influence): rank training points by a
score, inspect them in that order, and count the injected label flips found."""
from __future__ import annotations

import numpy as np
import pandas as pd


def detection_curve(scores, is_flipped) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of training data inspected (x) vs fraction of flipped labels found (y), inspecting
    in order of decreasing score (ties broken by position, so the curve is deterministic)."""
    scores = np.asarray(scores, dtype=float)
    is_flipped = np.asarray(is_flipped, dtype=bool)
    if is_flipped.sum() == 0:
        raise ValueError("no flipped labels to find")
    order = np.argsort(-scores, kind="stable")
    found = np.concatenate([[0], np.cumsum(is_flipped[order])]) / is_flipped.sum()
    inspected = np.arange(len(scores) + 1) / len(scores)
    return inspected, found


def curve_summary(scores, is_flipped, at=(0.1, 0.2, 0.3)) -> dict:
    """Fraction found after inspecting each fraction in ``at``, and the area under the curve
    (random inspection: found = inspected, area 0.5; perfect: area 1 - p/2 for flip rate p)."""
    x, y = detection_curve(scores, is_flipped)
    out = {f"found@{int(round(100 * a))}%": float(np.interp(a, x, y)) for a in at}
    out["auc"] = float(np.trapezoid(y, x))
    return out


def detection_table(method_scores: dict[str, np.ndarray], is_flipped, at=(0.1, 0.2, 0.3)) -> pd.DataFrame:
    """One row per method, sorted by area under the curve."""
    rows = [{"method": m, **curve_summary(s, is_flipped, at)} for m, s in method_scores.items()]
    return pd.DataFrame(rows).sort_values("auc", ascending=False).reset_index(drop=True)


def detection_curves_frame(method_scores: dict[str, np.ndarray], is_flipped, points: int = 101) -> pd.DataFrame:
    """Long table (method, inspected, found) for plotting, resampled to ``points`` x values."""
    grid = np.linspace(0, 1, points)
    frames = []
    for m, s in method_scores.items():
        x, y = detection_curve(s, is_flipped)
        frames.append(pd.DataFrame({"method": m, "inspected": grid, "found": np.interp(grid, x, y)}))
    return pd.concat(frames, ignore_index=True)
