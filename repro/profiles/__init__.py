"""Parameter profiles of the notebooks: ``smoke`` (CI), ``cpu`` (make reproduce), ``gpu``, ``paper``.

Each notebook has ``repro/profiles/<notebook>.yaml`` with a ``defaults`` block and one block per
profile; :func:`resolve` merges defaults, the profile and explicit overrides (an override of a key
the notebook does not know is an error, never silently ignored).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from repro.errors import UnknownNameError

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
    params.update(overrides or {})
    params["profile"] = profile
    return params
