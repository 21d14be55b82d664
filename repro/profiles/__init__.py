"""Parameter profiles of the notebooks: ``smoke`` (CI), ``cpu`` (make reproduce), ``gpu``, ``paper``.

Each notebook has ``repro/profiles/<notebook>.yaml`` with a ``defaults`` block and one block per
profile; :func:`resolve` merges defaults, the profile and explicit overrides (an override of a key
the notebook does not know is an error, never silently ignored).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from repro.errors import InvalidParameterError, UnknownNameError

PROFILE_DIR = Path(__file__).parent
PROFILES = ("smoke", "cpu", "gpu", "paper")


def _read(notebook: str) -> dict:
    path = PROFILE_DIR / f"{notebook}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise UnknownNameError(f"no profiles for notebook {notebook!r}; known: {known}")
    return yaml.safe_load(path.read_text()) or {}


def profiles(notebook: str) -> list[str]:
    """Profile names defined for a notebook."""
    return [k for k in _read(notebook) if k != "defaults"]


def resolve(notebook: str, profile: str, overrides: dict | None = None) -> dict:
    """Parameters of ``notebook`` under ``profile``, with ``overrides`` applied on top."""
    spec = _read(notebook)
    if profile not in spec or profile == "defaults":
        raise UnknownNameError(f"unknown profile {profile!r} for {notebook}; known: {profiles(notebook)}")
    params = dict(spec.get("defaults") or {})
    params.update(spec[profile] or {})
    unknown = sorted(set(overrides or {}) - set(params))
    if unknown:
        raise UnknownNameError(f"unknown parameter(s) {unknown} for {notebook}; known: {sorted(params)}")
    for key, value in (overrides or {}).items():
        check_override(notebook, key, params[key], value)
    params.update(overrides or {})
    params["profile"] = profile
    return params


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def check_override(notebook: str, key: str, default, value) -> None:
    """An override must have the type of the profile's value for ``key`` (``--set epochs=abc`` on an
    integer is refused here, before papermill starts a kernel): an integer needs an integer (``3.0``
    is accepted), a number any number, a boolean true/false, a string a string, a list a list. A
    parameter whose default is ``null`` accepts anything, and ``null`` is accepted for every key."""
    if default is None or value is None:
        return
    want, got = _kind(default), _kind(value)
    ok = want == got
    if want == "number" and got == "integer":
        ok = True
    if want == "integer" and got == "number" and float(value).is_integer():
        ok = True
    if not ok:
        raise InvalidParameterError(
            f"parameter {key!r} of {notebook} takes {'an' if want[0] in 'aeiou' else 'a'} {want} (profile value {default!r}), got {value!r} "
            f"({got}); e.g. --set {key}={default if not isinstance(default, (list, dict)) else default!r}")


# ---------------------------------------------------------------------------------------------
# Papermill-native parameters: every key of a notebook's profile is a top-level variable of its
# ``parameters`` cell. ``...`` (Ellipsis) there means "the chosen profile's value"; anything else
# (``None`` included) is an explicit value and wins over the profile.

RESERVED = ("profile", "results_dir")
UNSET = ...  # the parameters cell's marker for "take the profile's value"


def keys(notebook: str) -> list[str]:
    """Parameter names of a notebook (its ``defaults`` block, in file order); every profile may
    only set these."""
    spec = _read(notebook)
    names = list(spec.get("defaults") or {})
    for prof, block in spec.items():
        extra = sorted(set(block or {}) - set(names)) if prof != "defaults" else []
        if extra:
            raise InvalidParameterError(f"profile {prof!r} of {notebook} sets {extra}, which its defaults "
                                        "block lacks; every parameter needs a default")
    clash = sorted(set(names) & set(RESERVED))
    if clash:
        raise InvalidParameterError(f"{notebook}'s profiles use the reserved name(s) {clash}")
    return names


def _yaml_comments(notebook: str) -> dict[str, str]:
    """Inline comments of the ``defaults`` block (``  key: value  # comment``), keyed by name."""
    import re

    out, inside = {}, False
    for line in (PROFILE_DIR / f"{notebook}.yaml").read_text().splitlines():
        if re.match(r"^defaults\s*:", line):
            inside = True
            continue
        if inside and re.match(r"^\S", line):
            break
        m = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line) if inside else None
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def parameters_cell(notebook: str) -> str:
    """Source of the notebook's ``parameters`` cell, generated from its profiles (one variable per
    key, ``...`` = the profile's value, a comment with the type and each profile's value).
    ``scripts/sync_notebooks.py`` writes it into the notebook; a test checks it is current."""
    spec = _read(notebook)
    names = keys(notebook)
    profs = profiles(notebook)
    comments = _yaml_comments(notebook)
    resolved = {p: resolve(notebook, p) for p in profs}
    lines = [
        "# Parameters (papermill: -p NAME VALUE; repro run: --set NAME=VALUE; or edit here).",
        "# `...` = the value of the chosen profile; `repro params " + notebook + " --profile cpu` lists them.",
        "# Any other value, None included, overrides the profile. Unknown names are an error.",
        'profile: str = "smoke"  # ' + " | ".join(profs) + " (smoke: a seconds-long test run, numbers meaningless)",
        "results_dir = None  # results root; None: results/ of the checkout, or $REPRO_RESULTS",
    ]
    for k in names:
        vals = [resolved[p][k] for p in profs]
        kind = _kind(spec["defaults"][k]) if spec["defaults"][k] is not None else \
            next((_kind(v) for v in vals if v is not None), "any")
        if kind != "any" and any(v is None for v in vals):
            kind += " or None"
        if all(repr(v) == repr(vals[0]) for v in vals):
            where = f"all profiles: {vals[0]!r}"
        else:
            where = ", ".join(f"{p} {v!r}" for p, v in zip(profs, vals))
        note = f"; {comments[k]}" if k in comments else ""
        ann = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "list": "list",
               "mapping": "dict"}.get(kind.split(" ")[0])
        help_text = f"{kind}; {where}{note}".replace("=", ":")  # papermill skips lines with two '='
        lines.append(f"{k}{': ' + ann if ann else ''} = ...  # {help_text}")
    return "\n".join(lines)


def _injected_names(namespace: dict) -> set[str]:
    """Names assigned by papermill's injected cells: the kernel's input history (``In``) holds
    their source, which papermill starts with ``# Parameters``."""
    import ast

    names: set[str] = set()
    for src in namespace.get("In") or []:
        if not isinstance(src, str) or not src.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    if isinstance(target, ast.Name):
                        names.add(target.id)
    return names


def from_namespace(notebook: str, namespace: dict) -> tuple[str, dict, object]:
    """``(profile, overrides, results_dir)`` from a notebook's global variables: the parameters
    cell's names plus whatever papermill injected after it. Every name that is not ``...`` is an
    explicit override. A name papermill injected that is not a parameter of the notebook (a ``-p``
    with a mistyped name, which papermill itself only warns about) raises
    :class:`UnknownNameError` with a suggestion; the notebook's own variables are never mistaken
    for parameters."""
    import difflib

    names = keys(notebook)
    profile = namespace.get("profile", "smoke")
    if profile is UNSET or profile is None:
        profile = "smoke"
    if not isinstance(profile, str):
        raise InvalidParameterError(f"profile must be a string ({' | '.join(profiles(notebook))}), got {profile!r}")
    results_dir = namespace.get("results_dir")
    results_dir = None if results_dir is UNSET else results_dir
    known = set(names) | set(RESERVED)
    unknown = sorted(_injected_names(namespace) - known)
    if unknown:
        hints = {u: difflib.get_close_matches(u, sorted(known), n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise UnknownNameError(f"unknown parameter(s) {unknown} for {notebook}" + (f" ({hint})" if hint else "")
                               + f"; known: {sorted(known)}")
    overrides = {k: namespace[k] for k in names if k in namespace and namespace[k] is not UNSET}
    return profile, overrides, results_dir


def run_key(notebook: str, profile: str, overrides: dict | None = None) -> str:
    """Folder name of a run's checkpoints under ``runs/<notebook>/``: the profile's name when the
    parameters are the profile's own, else ``<profile>-<hash of the parameters that differ>``, so
    runs with different parameters (a sweep) never share, or fight over, a checkpoint folder."""
    import hashlib
    import json

    base = resolve(notebook, profile)
    diff = {k: v for k, v in (overrides or {}).items() if k in base and repr(base[k]) != repr(v)}
    if not diff:
        return profile
    blob = json.dumps(diff, sort_keys=True, default=repr).encode()
    return f"{profile}-{hashlib.sha256(blob).hexdigest()[:10]}"
