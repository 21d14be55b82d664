"""Tidy an executed notebook before it is kept as a result: no machine paths, merged streams.

``repro run`` calls :func:`tidy_executed` on the executed copy: stream outputs of a cell are merged
into one per stream (carriage-return progress updates collapsed to their final state, as nbclient's
``coalesce_streams`` does) and absolute paths of this machine (the private staging folder, the
checkout, the home folder) are rewritten to the paths a reader of the repository sees
(``results/<notebook>/<profile>/...``, ``notebooks/...``, ``~``)."""
from __future__ import annotations

import re
from pathlib import Path


def _collapse(text: str) -> str:
    text = text.replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def merge_streams(outputs: list) -> list:
    """One ``stream`` output per stream name (stdout, stderr) at the place of its first chunk,
    with carriage-return updates collapsed; other outputs keep their order."""
    merged, first = [], {}
    for out in outputs:
        if out.get("output_type") == "stream":
            name = out.get("name", "stdout")
            if name in first:
                first[name]["text"] += out["text"]
                continue
            out = dict(out)
            first[name] = out
        merged.append(out)
    for out in first.values():
        out["text"] = _collapse(out["text"])
        out["text"] = re.sub(r"\n[ \t]*\n(?=[ \t]*\n)", "\n", out["text"])  # blank lines left by erased bars
    return [o for o in merged if not (o.get("output_type") == "stream" and not o["text"].strip())]


def _rewrite(value, subs: list[tuple[str, str]]):
    if isinstance(value, str):
        for old, new in subs:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_rewrite(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, subs) for k, v in value.items()}
    return value


def tidy_executed(path: str | Path, replacements: dict[str, str]) -> None:
    """Rewrite the executed notebook at ``path`` in place: merge each cell's streams and replace
    each key of ``replacements`` (an absolute path) by its value in outputs and metadata (longest
    key first, so a folder inside the checkout is rewritten before the checkout itself)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    subs = sorted(((str(k), str(v)) for k, v in replacements.items() if k), key=lambda kv: -len(kv[0]))
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [nbformat.from_dict(_rewrite(o, subs)) for o in merge_streams(cell.get("outputs", []))]
    nb.metadata = nbformat.from_dict(_rewrite(dict(nb.metadata), subs))
    nbformat.write(nb, str(path))
