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
