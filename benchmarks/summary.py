"""Headline ratios of the benchmark tables -> ``results/benchmarks/summary.json``.

Reads the tables that ``make bench`` writes (and FastIF's scale run from the committed
``results/fastif_hans/<profile>/`` of the notebook) and keeps, for each headline, the row at the
largest size measured, as ``{value, n, device, threads, commit, source, definition}``. Nothing is
measured here; a ratio whose table is missing is written as ``null`` with the reason.

    python benchmarks/summary.py [--dir results/benchmarks] [--fastif results/fastif_hans/cpu]

Ratios follow the tables' convention: > 1 means ours is faster (or smaller).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _env(path: Path) -> dict:
    env = path.with_suffix(".env.json")
    return json.loads(env.read_text()) if env.exists() else {}


def _num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _entry(value, n, env: dict, source: str, definition: str, **extra) -> dict:
    return {"value": None if value is None else round(float(value), 3), "n": n,
            "device": env.get("device"), "threads": env.get("torch_threads"),
            "commit": env.get("git_commit"), "source": source, "definition": definition, **extra}


def _missing(source: str, definition: str, why: str) -> dict:
    return {"value": None, "n": None, "device": None, "threads": None, "commit": None,
            "source": source, "definition": definition, "missing": why}


def tracin_ratios(d: Path) -> dict:
    """TracInCP headlines from tracin_peers.csv / tracin_peers_floor.csv (VGG rows)."""
    out = {}
    path, floor_path = d / "tracin_peers.csv", d / "tracin_peers_floor.csv"
    if not path.exists():
        why = f"{path.name} not found (run benchmarks/bench_tracin_peers.py)"
        for key in ("tracincp_all_vs_captum_best", "tracincp_convlin_vs_captum_best",
                    "tracincp_self_vs_captum_best", "tracincp_last_vs_captum_fast",
                    "peak_memory_ours_vs_captum"):
            out[key] = _missing(path.name, "", why)
    else:
        rows, env = _rows(path), _env(path)
        timed = [r for r in rows if r["model"] == "vgg" and not r.get("skipped") and _num(r["seconds"])]

        def best_peer(task, params, prefix):
            """(captum's fastest / ours at the largest n where both ran, that n, the peer row)."""
            by_n = {}
            for r in timed:
                if r["task"] == task and r["params"] == params:
                    by_n.setdefault(int(r["n_train"]), []).append(r)
            for n in sorted(by_n, reverse=True):
                group = by_n[n]
                ours = [r for r in group if r["impl"] == "ours:auto"] or \
                       [r for r in group if r["impl"] == "ours:stream"]
                peers = [r for r in group if r["impl"].startswith(prefix)]
                if ours and peers:
                    peer = min(peers, key=lambda r: float(r["seconds"]))
                    return float(peer["seconds"]) / float(ours[0]["seconds"]), n, peer, ours[0]
            return None, None, None, None

        specs = {
            "tracincp_all_vs_captum_best": ("scores", "all", "captum",
                                            "captum's fastest exact configuration on all VGG parameters "
                                            "(its per-example loop at its best batch) / ours, scores"),
            "tracincp_convlin_vs_captum_best": ("scores", "conv+linear", "captum",
                                                "captum's fastest exact configuration on the conv + linear "
                                                "parameters (batched hooks at their best batch) / ours, scores"),
            "tracincp_self_vs_captum_best": ("self", "all", "captum",
                                             "captum's fastest exact self-influence on all VGG parameters / ours"),
            "tracincp_last_vs_captum_fast": ("scores", "classifier.weight", "captum_fast",
                                             "captum TracInCPFast / ours on classifier.weight (its parameters)"),
        }
        found = {key: best_peer(task, params, prefix) for key, (task, params, prefix, _) in specs.items()}
        for key, (x, n, peer, ours) in found.items():
            definition = specs[key][3]
            out[key] = (_entry(x, n, env, path.name, definition, peer=peer["impl"], peer_batch=peer["batch_size"],
                               ours=ours["impl"], agree=peer["agree"], loadavg=_num(peer.get("loadavg")))
                        if x is not None else _missing(path.name, definition, "no row with both sides timed"))
        x, n, peer, ours = found["tracincp_all_vs_captum_best"]  # the memory of the same two rows
        mem_def = "captum's peak RSS growth / ours, all-parameter VGG scores (the timed rows above)"
        if x is not None and _num(ours["peak_rss_growth_mb"]) and _num(peer["peak_rss_growth_mb"]):
            out["peak_memory_ours_vs_captum"] = _entry(
                float(peer["peak_rss_growth_mb"]) / float(ours["peak_rss_growth_mb"]), n, env, path.name,
                mem_def, ours_mb=_num(ours["peak_rss_growth_mb"]), captum_mb=_num(peer["peak_rss_growth_mb"]))
        else:
            out["peak_memory_ours_vs_captum"] = _missing(path.name, mem_def, "no row with both peaks")
    floor_def = "our all-parameter TracInCP scores / (checkpoints x one batched forward + backward epoch)"
    if floor_path.exists():
        rows = [r for r in _rows(floor_path) if _num(r.get("x_floor"))]
        if rows:
            r = max(rows, key=lambda r: int(r["n_train"]))
            out["tracincp_all_over_floor"] = _entry(r["x_floor"], int(r["n_train"]), _env(floor_path),
                                                    floor_path.name, floor_def, impl=r["impl"])
    out.setdefault("tracincp_all_over_floor", _missing(floor_path.name, floor_def, "table not found"))
    return out


def lissa_ratio(d: Path) -> dict:
    path = d / "lissa_peers.csv"
    definition = ("dattri LiSSA (the other parameters frozen in its copy: its fastest configuration) / "
                  "ours, same recursion settings; the largest parameter set")
    if not path.exists():
        return _missing(path.name, definition, "table not found (run benchmarks/bench_lissa_peers.py)")
    rows = _rows(path)
    peers = [r for r in rows if r["impl"].startswith("dattri LiSSA (layer_name, rest frozen)") and _num(r["x_ours"])]
    if not peers:
        return _missing(path.name, definition, "no dattri row")
    r = max(peers, key=lambda r: int(r["d"]))
    return _entry(r["x_ours"], int(r["n_train"]), _env(path), path.name, definition, params=r["params"], d=int(r["d"]))


def tracin_we_ratio(d: Path) -> dict:
    path = d / "tracin_we.json"
    definition = ("our dense word-embedding-gradient route / our sparse shared-token route, same pairs "
                  "(measured, not the extrapolated rows)")
    if not path.exists():
        return _missing(path.name, definition, "table not found (run benchmarks/bench_tracin_we.py)")
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    env = data.get("environment", {}) if isinstance(data, dict) else {}
    dense = [r for r in rows if r.get("route") == "we_dense" and r.get("x_ours")]
    if not dense:
        return _missing(path.name, definition, "no we_dense row")
    r = max(dense, key=lambda r: r["n_train"])
    return _entry(r["x_ours"], r["n_train"], env, path.name, definition, n_test=r["n_test"],
                  memory_ratio=r.get("mem_x_ours"))


def fastif_ratio(fastif_dir: Path) -> dict:
    path = fastif_dir / "fastif_vs_full.csv"
    source = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    definition = ("full influence (every training gradient, s_test amortized) / FastIF per test point, "
                  "k = 1,000, one process, N = 20,000 (the FastIF notebook's scale run)")
    if not path.exists():
        return _missing(source, definition, "run notebooks/fastif_hans.ipynb at this profile")
    rows = [r for r in _rows(path) if r["variant"] == "FastIF, 1 process" and r["k"] == "1000"]
    meta_path = fastif_dir / "metrics.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    env = {"device": meta.get("device"), "git_commit": meta.get("git_commit"),
           "torch_threads": (meta.get("params") or {}).get("threads")}
    if not env["torch_threads"] and "threads 1" in (meta.get("device") or ""):
        env["torch_threads"] = 1
    at = [r for r in rows if int(r["N"]) == 20000] or sorted(rows, key=lambda r: int(r["N"]))[-1:]
    if not at:
        return _missing(source, definition, "no k = 1,000 row")
    r = at[0]
    return _entry(r["speedup"], int(r["N"]), env, source, definition, k=1000,
                  speedup_with_index_build=_num(r["speedup_amortized"]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--fastif", type=Path, default=ROOT / "results" / "fastif_hans" / "cpu")
    ap.add_argument("--out", type=Path, default=None, help="default: <dir>/summary.json")
    args = ap.parse_args(argv)
    summary = {**tracin_ratios(args.dir), "lissa_vs_dattri": lissa_ratio(args.dir),
               "tracin_we_sparse_vs_dense": tracin_we_ratio(args.dir),
               "fastif_vs_full_N20k": fastif_ratio(args.fastif)}
    out = args.out or args.dir / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for key, e in summary.items():
        print(f"{key:34s} {e['value']!s:>8}  n={e['n']}  {e.get('missing', '')}")
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
