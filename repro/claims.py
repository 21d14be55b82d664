"""Claims: every headline number machine-readable, every verdict computed from a stated criterion.

A replication notebook states, before it runs, how each of its numbers will be judged
(a :class:`Criterion`), then records what it measured with :func:`claim`. The verdict is computed
by code, never typed::

    from repro.claims import ci_above, claim, mean_ci
    diff = auc_tracin - auc_best_baseline            # one value per seed
    m, ci = mean_ci(diff)                           # t interval over seeds
    c = claim("tracin_beats_final_checkpoint_methods",
              claim="self-influence finds flipped labels better than IF and representer points",
              paper="TracIn > representer > IF (Fig. 1; values unverified)",
              ours=m, ci95=ci, unit="AUC difference", n="3 seeds",
              criterion=ci_above(0.0),
              reason="...likely cause, shown only when the verdict is not 'reproduced'...")

``metrics.json`` carries the list under ``"claims"``; :func:`claims_frame` makes the notebook's
paper-vs-ours table and :func:`claims_markdown` the rows of ``results/README.md`` from it.

Verdicts: ``reproduced``, ``partly``, ``not reproduced``, ``not testable here``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")


@dataclass(frozen=True)
class Criterion:
    """A rule, stated before the run, that turns ``(ours, ci95)`` into a verdict."""

    text: str
    rule: Callable[[float, tuple[float, float] | None], str]

    def verdict(self, ours, ci95) -> str:
        if ours is None or (isinstance(ours, float) and math.isnan(ours)):
            return "not testable here"
        v = self.rule(float(ours), None if ci95 is None else (float(ci95[0]), float(ci95[1])))
        if v not in VERDICTS:
            raise ValueError(f"criterion {self.text!r} returned {v!r}; expected one of {VERDICTS}")
        return v


def ci_above(threshold: float = 0.0, what: str = "the effect") -> Criterion:
    """Reproduced if the whole 95% CI lies above ``threshold``; partly if only the point estimate
    does (the CI includes the threshold); not reproduced otherwise."""
    def rule(ours, ci):
        if ci is None:
            raise ValueError("ci_above needs a confidence interval")
        if ci[0] > threshold:
            return "reproduced"
        return "partly" if ours > threshold else "not reproduced"
    return Criterion(f"reproduced if the 95% CI of {what} lies above {threshold:g}; partly if only the "
                     f"point estimate does; else not reproduced", rule)


def ci_below(threshold: float = 0.0, what: str = "the effect") -> Criterion:
    """Mirror image of :func:`ci_above`: the effect must lie below ``threshold``."""
    def rule(ours, ci):
        if ci is None:
            raise ValueError("ci_below needs a confidence interval")
        if ci[1] < threshold:
            return "reproduced"
        return "partly" if ours < threshold else "not reproduced"
    return Criterion(f"reproduced if the 95% CI of {what} lies below {threshold:g}; partly if only the "
                     f"point estimate does; else not reproduced", rule)


def at_least(threshold: float, partly_from: float | None = None, what: str = "the value") -> Criterion:
    """For a number without repetition (or where the CI is reported alongside but not decisive):
    reproduced if ``ours >= threshold``; partly if ``ours >= partly_from``."""
    def rule(ours, ci):
        if ours >= threshold:
            return "reproduced"
        if partly_from is not None and ours >= partly_from:
            return "partly"
        return "not reproduced"
    extra = f"; partly if >= {partly_from:g}" if partly_from is not None else ""
    return Criterion(f"reproduced if {what} >= {threshold:g}{extra}; else not reproduced", rule)


def claim(id: str, *, claim: str, paper: str, ours, unit: str, criterion: Criterion, ci95=None, n=None,
          reason: str = "", **extra) -> dict:
    """One claim record ``{id, claim, paper, ours, unit, ci95, n, criterion, verdict, reason}``.

    ``reason`` (the likely cause) is kept only when the verdict is not ``reproduced``; ``extra``
    fields (descriptive numbers such as a ratio of means) are stored alongside."""
    ours_f = None if ours is None else float(ours)
    ci = None if ci95 is None else [float(ci95[0]), float(ci95[1])]
    verdict = criterion.verdict(ours_f, ci)
    return {"id": id, "claim": claim, "paper": paper, "ours": ours_f, "unit": unit, "ci95": ci, "n": n,
            "criterion": criterion.text, "verdict": verdict,
            "reason": "" if verdict == "reproduced" else reason, **extra}


FIELDS = ("id", "claim", "paper", "ours", "unit", "ci95", "n", "criterion", "verdict", "reason")


def check_claims(claims: list[dict]) -> None:
    """Raise ``ValueError`` naming the problem if a claim record lacks a field, repeats an id or
    carries a verdict outside :data:`VERDICTS`."""
    seen = set()
    for c in claims:
        missing = [f for f in FIELDS if f not in c]
        if missing:
            raise ValueError(f"claim {c.get('id', '?')!r} lacks {missing}; build claims with repro.claims.claim")
        if c["verdict"] not in VERDICTS:
            raise ValueError(f"claim {c['id']!r}: verdict {c['verdict']!r} is not one of {VERDICTS}")
        if c["id"] in seen:
            raise ValueError(f"claim id {c['id']!r} appears twice")
        seen.add(c["id"])


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, list[float]]:
    """Mean and Student-t confidence interval of independent repeats (e.g. one value per seed).

    With fewer than 2 values the interval is ``[nan, nan]``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), [float("nan"), float("nan")]
    m = float(x.mean())
    if len(x) < 2:
        return m, [float("nan"), float("nan")]
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    if se == 0.0:
        return m, [m, m]
    lo, hi = stats.t.interval(level, len(x) - 1, loc=m, scale=se)
    return m, [float(lo), float(hi)]


def bootstrap_ci(values: Sequence[float], statistic=np.mean, level: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, list[float]]:
    """Statistic and percentile-bootstrap interval over independent units (e.g. test examples);
    for paired designs pass the per-unit differences."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return (float(statistic(x)) if len(x) else float("nan")), [float("nan"), float("nan")]
    if np.all(x == x[0]):
        return float(x[0]), [float(x[0]), float(x[0])]
    res = stats.bootstrap((x,), statistic, confidence_level=level, n_resamples=n_resamples,
                          method="percentile", random_state=np.random.default_rng(seed))
    return float(statistic(x)), [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}g}" if abs(x) < 1e4 else f"{x:.3g}"


def claims_frame(claims: list[dict]):
    """The paper-vs-ours table of a notebook: one row per claim."""
    import pandas as pd

    rows = []
    for c in claims:
        ci = c.get("ci95")
        ours = _fmt(c["ours"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
        rows.append({"claim": c["claim"], "paper": c["paper"], "ours (95% CI)": f"{ours} {c['unit']}",
                     "n": c.get("n"), "verdict": c["verdict"], "criterion": c["criterion"],
                     "reason": c.get("reason", "")})
    return pd.DataFrame(rows)


def claims_markdown(claims: list[dict], source: str = "") -> str:
    """Markdown rows (claim | paper | ours | verdict | reason) for ``results/README.md``."""
    lines = ["| claim | paper | ours (95% CI) | n | verdict | likely reason / note |", "|---|---|---|---|---|---|"]
    for c in claims:
        ci = c.get("ci95")
        ours = _fmt(c["ours"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + f" {c['unit']}"
        cell = lambda s: str(s or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {cell(c['claim'])} (`{c['id']}`) | {cell(c['paper'])} | {cell(ours)} | {cell(c.get('n'))} | "
                     f"**{c['verdict']}** | {cell(c.get('reason'))} |")
    if source:
        lines.append(f"\n{source}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# results/README.md: the summary block generated from every committed metrics.json
# ---------------------------------------------------------------------------------------------

PAPERS = {
    "turnover_cleansing": "Turn-over Dropout (Kobayashi et al. 2020)",
    "tracin_proponents": "TracIn (Pruthi et al. 2020)",
    "first_vs_last_deletion": "First is Better Than Last / TracIn-WE (Yeh et al. 2022)",
    "fastif_hans": "FastIF (Guo et al. 2021)",
}
BEGIN = "<!-- claims:begin: generated by scripts/results_summary.py from results/*/{profile}/metrics.json; do not edit by hand -->"
END = "<!-- claims:end -->"


def _source_line(record: dict) -> str:
    """Where a result came from: commit, command, wall time, device."""
    nb, profile = record.get("notebook", "?"), record.get("profile", "?")
    commit = str(record.get("git_commit") or "unknown")
    sha, dirty = commit.split("+")[0], "+dirty" in commit
    commit_txt = f"commit `{sha[:7]}`" + (" (working tree dirty)" if dirty else "")
    if record.get("git_changed_during_run"):
        commit_txt += f", HEAD or tree changed during the run (ended at `{str(record.get('git_commit_end'))[:7]}`)"
    command = (f"`{record['command']}`" if record.get("command") else
               f"`repro run {nb} --profile {profile}` (presumed: this metrics.json records no command)")
    wall = record.get("wall_time_s")
    wall_txt = f"wall time {wall / 60:.1f} min" if isinstance(wall, (int, float)) else "wall time not recorded"
    device = record.get("device")
    return (f"Source: `results/{nb}/{profile}/metrics.json`, {commit_txt}, {command}, {wall_txt}"
            + (f" ({device})" if device else "") + ".")


def results_summary(records: Sequence[dict], profile: str = "cpu") -> str:
    """The generated block of ``results/README.md`` (markers included) from ``metrics.json`` records:
    an overview (verdict counts per paper), then per paper its source (commit, command, wall time)
    and one row per claim (:func:`claims_markdown`). Records without claims are left out; the order
    is that of :data:`PAPERS`, then by notebook name."""
    order = list(PAPERS)
    recs = sorted((r for r in records if r.get("claims")),
                  key=lambda r: (order.index(r["notebook"]) if r["notebook"] in order else len(order), r["notebook"]))
    lines = [BEGIN.format(profile=profile), "",
             "| paper | notebook | claims | " + " | ".join(VERDICTS) + " |",
             "|---|---|---|" + "---|" * len(VERDICTS)]
    for r in recs:
        counts = [sum(c["verdict"] == v for c in r["claims"]) for v in VERDICTS]
        lines.append(f"| {PAPERS.get(r['notebook'], r['notebook'])} | `{r['notebook']}` | {len(r['claims'])} | "
                     + " | ".join(str(n) for n in counts) + " |")
    for r in recs:
        check_claims(r["claims"])
        lines += ["", f"### {PAPERS.get(r['notebook'], r['notebook'])}: `{r['notebook']}`", "",
                  _source_line(r), "", claims_markdown(r["claims"])]
    lines += ["", END]
    return "\n".join(lines)


def read_records(results_root, profile: str = "cpu") -> list[dict]:
    """Every ``<results_root>/<notebook>/<profile>/metrics.json``, sorted by notebook."""
    import json
    from pathlib import Path

    return [json.loads(p.read_text()) for p in sorted(Path(results_root).glob(f"*/{profile}/metrics.json"))]


def replace_block(text: str, block: str) -> str:
    """``text`` (a README) with the part from the begin marker to :data:`END` replaced by ``block``;
    raises ``ValueError`` if the markers are missing or out of order."""
    b = text.find("<!-- claims:begin")
    e = text.find(END)
    if b < 0 or e < 0 or e < b:
        raise ValueError("results/README.md needs the markers '<!-- claims:begin ... -->' and "
                         f"'{END}' (in that order) around the generated block")
    return text[:b] + block + text[e + len(END):]
