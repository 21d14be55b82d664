"""Regenerate the claims block of results/README.md from every committed metrics.json.

    python scripts/results_summary.py            # rewrite the block between the claims markers
    python scripts/results_summary.py --check    # exit 1 (and say so) if the README is stale
    python scripts/results_summary.py --profile gpu --print   # print a block for another profile

The block (between ``<!-- claims:begin ... -->`` and ``<!-- claims:end -->``) is made by
:func:`repro.claims.results_summary` from ``results/<notebook>/<profile>/metrics.json``: per paper
the source (commit, command, wall time) and one row per claim with its computed verdict. Everything
outside the markers stays hand-written. tests/test_results_readme.py fails while the block is stale."""
import argparse
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
from repro.claims import read_records, replace_block, results_summary  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--results", type=Path, default=root / "results")
    ap.add_argument("--readme", type=Path, default=root / "results" / "README.md")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if the README is stale")
    ap.add_argument("--print", action="store_true", help="print the block instead of writing it")
    a = ap.parse_args(argv)
    block = results_summary(read_records(a.results, a.profile), a.profile)
    if a.print:
        print(block)
        return 0
    text = a.readme.read_text()
    new = replace_block(text, block)
    if a.check:
        if new != text:
            print(f"{a.readme} is stale: run `python scripts/results_summary.py`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        a.readme.write_text(new)
        print("wrote", a.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
