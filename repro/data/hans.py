"""HANS-style NLI diagnostics generated from our own templates and vocabulary.

This module produces *HANS-style* examples in the spirit of McCoy, Pavlick &
Linzen (2019), "Right for the Wrong Reasons: Diagnosing Syntactic Heuristics in
Natural Language Inference".  It is **not** the real HANS data set: the
templates and the vocabulary below were written for this project and are much
smaller than the originals.  The real HANS can be loaded with
``load_hans(source="hub")`` when the Hugging Face Hub is reachable.

Three syntactic heuristics are probed, each with five subcases where the
heuristic leads to the wrong answer (label ``non-entailment``) and five where it
happens to give the right one (label ``entailment``):

* ``lexical_overlap`` -- every word of the hypothesis occurs in the premise;
* ``subsequence``     -- the hypothesis is a contiguous subsequence of the premise;
* ``constituent``     -- the hypothesis is a complete clause (subtree) of the premise.

Subcase names follow HANS: a prefix ``l``/``s``/``c`` (heuristic) plus ``n``/``e``
(non-entailment / entailment), e.g. ``ln_subject/object_swap`` or ``ce_adverb``.

Labels: ``0`` = entailment, ``1`` = non-entailment (as in the HANS release).

Sampling rules (per subcase): choose a template by weight, fill its slots at
random, capitalize the first letter and add a final period.  A candidate is
rejected when its (premise, hypothesis) pair was already produced, or when a
word repeats in the premise once ``the`` is removed (plural nouns count as their
singular, multi-word expressions such as ``in front of`` count as one word).
Every subcase draws from its own ``numpy.random.Generator`` derived from
``seed``, so a subcase's examples do not depend on which other subcases are
generated.
"""

from __future__ import annotations

import hashlib
import os
import socket
import string
import threading
from collections import Counter
from dataclasses import dataclass
from itertools import product
from typing import Iterable

import numpy as np
import pandas as pd

__all__ = [
    "ENTAILMENT",
    "NON_ENTAILMENT",
    "LABELS",
    "HEURISTICS",
    "SUBCASES",
    "SUBCASE_LIST",
    "TEMPLATES",
    "VOCAB",
    "COLUMNS",
    "DEFAULT_N_PER_SUBCASE",
    "TRAIN_ID_OFFSET",
    "HubUnavailableError",
    "Template",
    "content_words",
    "subcase_capacity",
    "generate",
    "load_hans",
]

ENTAILMENT = 0
NON_ENTAILMENT = 1
LABELS = ("entailment", "non-entailment")

HEURISTICS = ("lexical_overlap", "subsequence", "constituent")

COLUMNS = ("id", "premise", "hypothesis", "label", "heuristic", "subcase", "template")

#: Examples per subcase (and per split) when ``load_hans`` gets ``n_per_subcase=None``.
DEFAULT_N_PER_SUBCASE = 100
#: Ids of the generated ``train`` split start here; ``evaluation`` ids are below 1e6.
TRAIN_ID_OFFSET = 2_000_000
#: Ids are ``subcase_index * _ID_STRIDE + k``; hence at most this many rows per subcase.
_ID_STRIDE = 30_000

_HUB_NAMES = ("hans", "jhu-cogsci/hans")
_HUB_SPLITS = {"evaluation": "validation", "train": "train"}


class HubUnavailableError(RuntimeError):
    """The real HANS could not be loaded from the Hugging Face Hub."""


# --------------------------------------------------------------------------- #
# Vocabulary (our own lists)
# --------------------------------------------------------------------------- #

# (singular, plural) human nouns
_NOUNS = (
    ("doctor", "doctors"),
    ("lawyer", "lawyers"),
    ("senator", "senators"),
    ("artist", "artists"),
    ("judge", "judges"),
    ("manager", "managers"),
    ("actor", "actors"),
    ("author", "authors"),
    ("banker", "bankers"),
    ("professor", "professors"),
    ("president", "presidents"),
    ("secretary", "secretaries"),
    ("student", "students"),
    ("tourist", "tourists"),
    ("athlete", "athletes"),
    ("scientist", "scientists"),
)

# (past tense, passive participle) transitive verbs
_TRANSITIVE = (
    ("saw", "seen"),
    ("mentioned", "mentioned"),
    ("advised", "advised"),
    ("helped", "helped"),
    ("supported", "supported"),
    ("called", "called"),
    ("contacted", "contacted"),
    ("introduced", "introduced"),
    ("recommended", "recommended"),
    ("thanked", "thanked"),
    ("avoided", "avoided"),
    ("admired", "admired"),
    ("encouraged", "encouraged"),
    ("consulted", "consulted"),
    ("praised", "praised"),
    ("trusted", "trusted"),
)

_INTRANSITIVE = (
    "ran", "slept", "danced", "shouted", "waited",
    "resigned", "performed", "laughed", "arrived", "smiled",
)

# verbs taking either a noun phrase or a sentence: "knew the athlete (mentioned ...)"
_NP_S_VERBS = ("believed", "knew", "heard", "forgot", "remembered", "suspected", "understood")

# optionally transitive verbs for the NP/Z garden path: "Since the athlete hid(,) the ..."
_NP_Z_VERBS = ("hid", "left", "moved", "paid", "stopped", "fought", "visited")
_NP_Z_SUBORDINATORS = ("since", "because", "although", "after", "while", "when", "before")

_PREPOSITIONS = ("near", "behind", "beside", "by", "with", "in front of", "next to")

_ADJECTIVES = (
    "happy", "sad", "tall", "young", "old", "famous",
    "nervous", "angry", "clever", "brave", "busy", "quiet",
)

_RELATIVIZERS = ("who", "that")

# adverbs that do / do not entail the clause they modify
_ENTAILING_ADVERBS = ("certainly", "definitely", "clearly", "obviously", "undoubtedly", "surely")
_NON_ENTAILING_ADVERBS = ("supposedly", "probably", "maybe", "hopefully", "perhaps", "allegedly", "possibly")

# subordinators whose clause is / is not entailed
_NON_ENTAILING_SUBORDINATORS = ("if", "unless")
_ENTAILING_SUBORDINATORS = ("since", "because", "although", "after")

# clause-embedding verbs (followed by "that") that are / are not factive
_ENTAILING_EMBEDDING_VERBS = ("forgot", "learned", "remembered", "knew", "realized", "noticed", "discovered")
_NON_ENTAILING_EMBEDDING_VERBS = ("hoped", "claimed", "thought", "believed", "said", "assumed", "suspected", "feared")

# verbs whose object can be left understood: "The author read (the book)."
_UNDERSTOOD_OBJECT = (
    ("read", "book"),
    ("ate", "sandwich"),
    ("wrote", "letter"),
    ("painted", "picture"),
    ("cooked", "meal"),
    ("drank", "coffee"),
    ("sang", "song"),
    ("baked", "cake"),
    ("watched", "movie"),
    ("knitted", "scarf"),
)

#: Public, read-only view of the word lists.
VOCAB = {
    "nouns": _NOUNS,
    "transitive_verbs": _TRANSITIVE,
    "intransitive_verbs": _INTRANSITIVE,
    "np_s_verbs": _NP_S_VERBS,
    "np_z_verbs": _NP_Z_VERBS,
    "np_z_subordinators": _NP_Z_SUBORDINATORS,
    "prepositions": _PREPOSITIONS,
    "adjectives": _ADJECTIVES,
    "relativizers": _RELATIVIZERS,
    "entailing_adverbs": _ENTAILING_ADVERBS,
    "non_entailing_adverbs": _NON_ENTAILING_ADVERBS,
    "entailing_subordinators": _ENTAILING_SUBORDINATORS,
    "non_entailing_subordinators": _NON_ENTAILING_SUBORDINATORS,
    "entailing_embedding_verbs": _ENTAILING_EMBEDDING_VERBS,
    "non_entailing_embedding_verbs": _NON_ENTAILING_EMBEDDING_VERBS,
    "understood_object_verbs": _UNDERSTOOD_OBJECT,
}


class _Filler:
    """One slot filler: formats as ``text``; extra attributes (``be``, ``pp``,
    ``obj``) are reachable from templates as ``{SLOT.attr}``."""

    __slots__ = ("text", "be", "pp", "obj")

    def __init__(self, text: str, be: str = "", pp: str = "", obj: str = ""):
        self.text, self.be, self.pp, self.obj = text, be, pp, obj

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)

    def __repr__(self) -> str:
        return f"_Filler({self.text!r})"


def _words(items: Iterable[str]) -> tuple[_Filler, ...]:
    return tuple(_Filler(w) for w in items)


_CATEGORIES: dict[str, tuple[_Filler, ...]] = {
    # a human noun in either number; ``be`` agrees with it (was / were)
    "noun": tuple(
        _Filler(form, be=be)
        for sg, pl in _NOUNS
        for form, be in ((sg, "was"), (pl, "were"))
    ),
    "noun_pl": tuple(_Filler(pl, be="were") for _, pl in _NOUNS),
    "vt": tuple(_Filler(past, pp=pp) for past, pp in _TRANSITIVE),
    # transitive verbs whose past tense equals the participle (passives keep full lexical overlap)
    "vt_reg": tuple(_Filler(past, pp=pp) for past, pp in _TRANSITIVE if past == pp),
    "vi": _words(_INTRANSITIVE),
    "v_nps": _words(_NP_S_VERBS),
    "v_npz": _words(_NP_Z_VERBS),
    "sub_npz": _words(_NP_Z_SUBORDINATORS),
    "prep": _words(_PREPOSITIONS),
    "adj": _words(_ADJECTIVES),
    "rel": _words(_RELATIVIZERS),
    "adv_ent": _words(_ENTAILING_ADVERBS),
    "adv_nonent": _words(_NON_ENTAILING_ADVERBS),
    "sub_ent": _words(_ENTAILING_SUBORDINATORS),
    "sub_nonent": _words(_NON_ENTAILING_SUBORDINATORS),
    "vemb_ent": _words(_ENTAILING_EMBEDDING_VERBS),
    "vemb_nonent": _words(_NON_ENTAILING_EMBEDDING_VERBS),
    "v_uo": tuple(_Filler(v, obj=o) for v, o in _UNDERSTOOD_OBJECT),
}

_PLURAL_TO_SINGULAR = {pl: sg for sg, pl in _NOUNS}
_MULTIWORD = tuple(sorted((p for p in _PREPOSITIONS if " " in p), key=len, reverse=True))
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})


def content_words(sentence: str) -> list[str]:
    """Normalized words of ``sentence`` used by the no-repeat rule.

    Lowercases, strips punctuation, joins multi-word prepositions into one token
    (``in front of`` -> ``in_front_of``), drops ``the`` and maps plural nouns of
    the vocabulary to their singular.
    """
    text = " " + " ".join(sentence.lower().translate(_PUNCT_TABLE).split()) + " "
    for mwe in _MULTIWORD:
        text = text.replace(f" {mwe} ", " " + mwe.replace(" ", "_") + " ")
    return [_PLURAL_TO_SINGULAR.get(w, w) for w in text.split() if w != "the"]


def _has_repeat(sentence: str) -> bool:
    counts = Counter(content_words(sentence))
    return any(c > 1 for c in counts.values())


# --------------------------------------------------------------------------- #
# Templates
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Template:
    """A premise/hypothesis pattern.

    ``slots`` lists ``(name, category)``; ``premise`` and ``hypothesis`` are
    :py:meth:`str.format` patterns over the slot names (the hypothesis reuses the
    premise's fillers).  ``{N.be}`` is the agreeing form of *be*, ``{V.pp}`` the
    participle and ``{U.obj}`` the understood object.
    """

    name: str
    heuristic: str
    label: int
    subcase: str
    slots: tuple[tuple[str, str], ...]
    premise: str
    hypothesis: str
    weight: float = 1.0

    def render(self, fillers: dict[str, _Filler]) -> tuple[str, str]:
        return _finish(self.premise.format(**fillers)), _finish(self.hypothesis.format(**fillers))


def _finish(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + "."


_HEURISTIC_OF_PREFIX = {"l": "lexical_overlap", "s": "subsequence", "c": "constituent"}

# (subcase, slots, premise, hypothesis[, weight]); slots as "NAME:category ..."
_RAW: list[tuple] = []


def _add(subcase: str, slots: str, premise: str, hypothesis: str, weight: float = 1.0) -> None:
    _RAW.append((subcase, slots, premise, hypothesis, weight))


# ---- lexical overlap: non-entailment ------------------------------------- #
_add("ln_subject/object_swap", "N1:noun V:vt N2:noun",
     "the {N1} {V} the {N2}", "the {N2} {V} the {N1}")
_add("ln_preposition", "N1:noun P:prep N2:noun V:vt N3:noun",
     "the {N1} {P} the {N2} {V} the {N3}", "the {N3} {V} the {N2}")
_add("ln_relative_clause", "N1:noun R:rel V1:vt N2:noun V2:vt N3:noun",
     "the {N1} {R} {V1} the {N2} {V2} the {N3}", "the {N2} {V2} the {N1}")
_add("ln_relative_clause", "N1:noun R:rel N2:noun V1:vt V2:vt N3:noun",
     "the {N1} {R} the {N2} {V1} {V2} the {N3}", "the {N2} {V2} the {N3}")
_add("ln_passive", "N1:noun V:vt_reg N2:noun",
     "the {N1} {N1.be} {V.pp} by the {N2}", "the {N1} {V} the {N2}")
_add("ln_conjunction", "N1:noun V:vt N2:noun N3:noun",
     "the {N1} {V} the {N2} and the {N3}", "the {N2} {V} the {N3}")
_add("ln_conjunction", "N1:noun N2:noun V:vt N3:noun",
     "the {N1} and the {N2} {V} the {N3}", "the {N3} {V} the {N2}")

# ---- lexical overlap: entailment ----------------------------------------- #
_add("le_relative_clause", "N1:noun R:rel N2:noun V1:vt V2:vt N3:noun",
     "the {N1} {R} the {N2} {V1} {V2} the {N3}", "the {N2} {V1} the {N1}")
_add("le_relative_clause", "N1:noun R:rel V1:vt N2:noun V2:vt N3:noun",
     "the {N1} {R} {V1} the {N2} {V2} the {N3}", "the {N1} {V1} the {N2}")
_add("le_around_prepositional_phrase", "N1:noun P:prep N2:noun V:vt N3:noun",
     "the {N1} {P} the {N2} {V} the {N3}", "the {N1} {V} the {N3}")
_add("le_around_relative_clause", "N1:noun R:rel N2:noun V1:vt V2:vt N3:noun",
     "the {N1} {R} the {N2} {V1} {V2} the {N3}", "the {N1} {V2} the {N3}")
_add("le_around_relative_clause", "N1:noun R:rel V1:vt N2:noun V2:vt N3:noun",
     "the {N1} {R} {V1} the {N2} {V2} the {N3}", "the {N1} {V2} the {N3}")
_add("le_conjunction", "N1:noun N2:noun V:vt N3:noun",
     "the {N1} and the {N2} {V} the {N3}", "the {N2} {V} the {N3}")
_add("le_conjunction", "N1:noun V:vt N2:noun N3:noun",
     "the {N1} {V} the {N2} and the {N3}", "the {N1} {V} the {N3}")
_add("le_passive", "N1:noun V:vt_reg N2:noun",
     "the {N1} {N1.be} {V.pp} by the {N2}", "the {N2} {V} the {N1}")

# ---- subsequence: non-entailment ----------------------------------------- #
_add("sn_NP/S", "N1:noun S:v_nps N2:noun V:vt N3:noun",
     "the {N1} {S} the {N2} {V} the {N3}", "the {N1} {S} the {N2}")
_add("sn_NP/S", "N1:noun S:v_nps N2:noun V:vi",
     "the {N1} {S} the {N2} {V}", "the {N1} {S} the {N2}")
_add("sn_PP_on_subject", "N1:noun P:prep N2:noun V:vi",
     "the {N1} {P} the {N2} {V}", "the {N2} {V}")
_add("sn_PP_on_subject", "N1:noun P:prep N2:noun V:vt N3:noun",
     "the {N1} {P} the {N2} {V} the {N3}", "the {N2} {V} the {N3}")
_add("sn_relative_clause_on_subject", "N1:noun R:rel V1:vt N2:noun V2:vt N3:noun",
     "the {N1} {R} {V1} the {N2} {V2} the {N3}", "the {N2} {V2} the {N3}")
_add("sn_relative_clause_on_subject", "N1:noun R:rel V1:vt N2:noun V2:vi",
     "the {N1} {R} {V1} the {N2} {V2}", "the {N2} {V2}")
_add("sn_past_participle", "N1:noun V1:vt_reg N2:noun V2:vi",
     "the {N1} {V1.pp} by the {N2} {V2}", "the {N2} {V2}")
_add("sn_past_participle", "N1:noun V1:vt_reg N2:noun V2:vt N3:noun",
     "the {N1} {V1.pp} by the {N2} {V2} the {N3}", "the {N2} {V2} the {N3}")
_add("sn_NP/Z", "C:sub_npz N1:noun Z:v_npz N2:noun V:vt N3:noun",
     "{C} the {N1} {Z} the {N2} {V} the {N3}", "the {N1} {Z} the {N2}")
_add("sn_NP/Z", "C:sub_npz N1:noun Z:v_npz N2:noun V:vi",
     "{C} the {N1} {Z} the {N2} {V}", "the {N1} {Z} the {N2}")

# ---- subsequence: entailment --------------------------------------------- #
_add("se_conjunction", "N1:noun N2:noun V:vi",
     "the {N1} and the {N2} {V}", "the {N2} {V}")
_add("se_conjunction", "N1:noun V:vt N2:noun N3:noun",
     "the {N1} {V} the {N2} and the {N3}", "the {N1} {V} the {N2}")
_add("se_adjective", "A:adj N1:noun_pl V:vt N2:noun",
     "{A} {N1} {V} the {N2}", "{N1} {V} the {N2}")
_add("se_adjective", "A:adj N1:noun_pl V:vi",
     "{A} {N1} {V}", "{N1} {V}")
_add("se_understood_object", "N1:noun U:v_uo",
     "the {N1} {U} the {U.obj}", "the {N1} {U}")
_add("se_relative_clause_on_obj", "N1:noun V1:vt N2:noun R:rel V2:vt N3:noun",
     "the {N1} {V1} the {N2} {R} {V2} the {N3}", "the {N1} {V1} the {N2}")
_add("se_relative_clause_on_obj", "N1:noun V1:vt N2:noun R:rel V2:vi",
     "the {N1} {V1} the {N2} {R} {V2}", "the {N1} {V1} the {N2}")
_add("se_PP_on_obj", "N1:noun V:vt N2:noun P:prep N3:noun",
     "the {N1} {V} the {N2} {P} the {N3}", "the {N1} {V} the {N2}")

# ---- constituent (clauses built from two shapes) -------------------------- #


def _clause(shape: str, tag: str) -> tuple[str, str]:
    """Slots and text of a clause: ``i`` intransitive, ``t`` transitive."""
    if shape == "i":
        return f"{tag}N:noun {tag}V:vi", f"the {{{tag}N}} {{{tag}V}}"
    return (f"{tag}N:noun {tag}V:vt {tag}O:noun",
            f"the {{{tag}N}} {{{tag}V}} the {{{tag}O}}")


for _s1, _s2 in product("it", repeat=2):
    (_sl1, _c1), (_sl2, _c2) = _clause(_s1, "a"), _clause(_s2, "b")
    _add("cn_embedded_under_if", f"C:sub_nonent {_sl1} {_sl2}", f"{{C}} {_c1}, {_c2}", _c1)
    _add("cn_after_if_clause", f"C:sub_nonent {_sl1} {_sl2}", f"{{C}} {_c1}, {_c2}", _c2)
    _add("ce_embedded_under_since", f"C:sub_ent {_sl1} {_sl2}", f"{{C}} {_c1}, {_c2}", _c1)
    _add("ce_after_since_clause", f"C:sub_ent {_sl1} {_sl2}", f"{{C}} {_c1}, {_c2}", _c2)
    for _hyp in (_c1, _c2):
        _add("cn_disjunction", f"{_sl1} {_sl2}", f"{_c1}, or {_c2}", _hyp)
        _add("ce_conjunction", f"{_sl1} {_sl2}", f"{_c1}, and {_c2}", _hyp)

for _s in "it":
    _sl, _c = _clause(_s, "a")
    _add("cn_embedded_under_verb", f"M:noun E:vemb_nonent {_sl}", f"the {{M}} {{E}} that {_c}", _c)
    _add("ce_embedded_under_verb", f"M:noun E:vemb_ent {_sl}", f"the {{M}} {{E}} that {_c}", _c)
    _add("cn_adverb", f"D:adv_nonent {_sl}", f"{{D}} {_c}", _c)
    _add("ce_adverb", f"D:adv_ent {_sl}", f"{{D}} {_c}", _c)


def _build_templates() -> tuple[Template, ...]:
    out = []
    for i, (subcase, slots, premise, hypothesis, weight) in enumerate(_RAW, start=1):
        slot_pairs = tuple(tuple(s.split(":")) for s in slots.split())
        for _, cat in slot_pairs:
            if cat not in _CATEGORIES:  # pragma: no cover - definition error
                raise KeyError(f"unknown slot category {cat!r} in {subcase}")
        out.append(Template(
            name=f"temp{i}",
            heuristic=_HEURISTIC_OF_PREFIX[subcase[0]],
            label=ENTAILMENT if subcase[1] == "e" else NON_ENTAILMENT,
            subcase=subcase,
            slots=slot_pairs,
            premise=premise,
            hypothesis=hypothesis,
            weight=float(weight),
        ))
    return tuple(out)


#: All templates, in definition order (``template`` column = ``Template.name``).
TEMPLATES: tuple[Template, ...] = _build_templates()

_SUBCASE_NAMES = {
    "lexical_overlap": {
        "non-entailment": ["ln_subject/object_swap", "ln_preposition", "ln_relative_clause",
                           "ln_passive", "ln_conjunction"],
        "entailment": ["le_relative_clause", "le_around_prepositional_phrase",
                       "le_around_relative_clause", "le_conjunction", "le_passive"],
    },
    "subsequence": {
        "non-entailment": ["sn_NP/S", "sn_PP_on_subject", "sn_relative_clause_on_subject",
                           "sn_past_participle", "sn_NP/Z"],
        "entailment": ["se_conjunction", "se_adjective", "se_understood_object",
                       "se_relative_clause_on_obj", "se_PP_on_obj"],
    },
    "constituent": {
        "non-entailment": ["cn_embedded_under_if", "cn_after_if_clause", "cn_embedded_under_verb",
                           "cn_disjunction", "cn_adverb"],
        "entailment": ["ce_embedded_under_since", "ce_after_since_clause", "ce_embedded_under_verb",
                       "ce_conjunction", "ce_adverb"],
    },
}

#: heuristic -> {"entailment": [...], "non-entailment": [...]}
SUBCASES: dict[str, dict[str, list[str]]] = {
    h: {"entailment": list(d["entailment"]), "non-entailment": list(d["non-entailment"])}
    for h, d in _SUBCASE_NAMES.items()
}

#: Flat list of ``(heuristic, label, subcase)`` in canonical order; the position
#: is the subcase index used for its random stream and its id block.
SUBCASE_LIST: tuple[tuple[str, int, str], ...] = tuple(
    (h, lab, s)
    for h in HEURISTICS
    for lab, key in ((NON_ENTAILMENT, "non-entailment"), (ENTAILMENT, "entailment"))
    for s in _SUBCASE_NAMES[h][key]
)

_TEMPLATES_BY_SUBCASE: dict[str, tuple[Template, ...]] = {
    s: tuple(t for t in TEMPLATES if t.subcase == s) for _, _, s in SUBCASE_LIST
}
assert len(SUBCASE_LIST) == 30 and all(_TEMPLATES_BY_SUBCASE.values())
assert {t.subcase for t in TEMPLATES} == set(_TEMPLATES_BY_SUBCASE)


def subcase_capacity(subcase: str) -> int:
    """Upper bound on the number of distinct pairs a subcase can produce
    (sum over its templates of the product of slot-category sizes; fillers that
    break the no-repeat rule are not subtracted)."""
    total = 0
    for t in _TEMPLATES_BY_SUBCASE[subcase]:
        k = 1
        for _, cat in t.slots:
            k *= len(_CATEGORIES[cat])
        total += k
    return total


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #


def _split_of(premise: str) -> str:
    """Deterministic 50/50 assignment of a premise to ``evaluation`` / ``train``."""
    digest = hashlib.blake2b(premise.lower().encode("utf-8"), digest_size=8).digest()
    return "evaluation" if digest[0] % 2 == 0 else "train"


def _max_attempts(n: int) -> int:
    return 50 * n + 5_000


def _sample_subcase(subcase_index: int, n: int, seed: int, split: str | None) -> list[tuple]:
    heuristic, label, subcase = SUBCASE_LIST[subcase_index]
    templates = _TEMPLATES_BY_SUBCASE[subcase]
    capacity = subcase_capacity(subcase)
    if n > capacity:
        raise ValueError(
            f"n_per_subcase={n} is unattainable for subcase {subcase!r}: its templates "
            f"yield at most {capacity} distinct examples; use a smaller n_per_subcase."
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(subcase_index,)))
    weights = np.array([t.weight for t in templates], dtype=float)
    weights /= weights.sum()
    seen: set[tuple[str, str]] = set()
    rows: list[tuple] = []
    attempts = 0
    limit = _max_attempts(n)
    while len(rows) < n:
        if attempts >= limit:
            raise ValueError(
                f"could only generate {len(rows)} of n_per_subcase={n} unique examples for "
                f"subcase {subcase!r}{'' if split is None else f' (split {split!r})'} after "
                f"{attempts} attempts (at most {capacity} distinct examples exist before the "
                "no-repeat rule and the split); use a smaller n_per_subcase."
            )
        attempts += 1
        t = templates[int(rng.choice(len(templates), p=weights))] if len(templates) > 1 else templates[0]
        fillers = {}
        for name, cat in t.slots:
            options = _CATEGORIES[cat]
            fillers[name] = options[int(rng.integers(len(options)))]
        premise, hypothesis = t.render(fillers)
        key = (premise, hypothesis)
        if key in seen or _has_repeat(premise):
            continue
        if split is not None and _split_of(premise) != split:
            continue
        seen.add(key)
        rows.append((premise, hypothesis, label, heuristic, subcase, t.name))
    return rows


def _normalize_heuristics(heuristics) -> tuple[str, ...]:
    if heuristics is None:
        return HEURISTICS
    if isinstance(heuristics, str):
        heuristics = (heuristics,)
    heuristics = tuple(heuristics)
    unknown = [h for h in heuristics if h not in HEURISTICS]
    if unknown:
        raise ValueError(f"unknown heuristic(s) {unknown}; choose from {list(HEURISTICS)}")
    return heuristics


def _check_n(n_per_subcase) -> int:
    if isinstance(n_per_subcase, bool) or not isinstance(n_per_subcase, (int, np.integer)):
        raise TypeError(f"n_per_subcase must be an int, got {n_per_subcase!r}")
    n = int(n_per_subcase)
    if n < 0:
        raise ValueError(f"n_per_subcase must be >= 0, got {n}")
    if n > _ID_STRIDE:
        raise ValueError(f"n_per_subcase must be <= {_ID_STRIDE}, got {n}")
    return n


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _frame(records: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    df["id"] = df["id"].astype("int64")
    df["label"] = df["label"].astype("int64")
    for col in ("premise", "hypothesis", "heuristic", "subcase", "template"):
        df[col] = df[col].astype(object)
    return df.reset_index(drop=True)


def _generate(n: int, seed: int, heuristics, split: str | None, id_offset: int) -> pd.DataFrame:
    wanted = set(_normalize_heuristics(heuristics))
    for _, _, subcase in SUBCASE_LIST:  # fail fast, before any sampling
        if _HEURISTIC_OF_PREFIX[subcase[0]] in wanted and n > subcase_capacity(subcase):
            raise ValueError(
                f"n_per_subcase={n} is unattainable for subcase {subcase!r}: its templates "
                f"yield at most {subcase_capacity(subcase)} distinct examples; use a smaller "
                "n_per_subcase."
            )
    records = []
    for idx, (heuristic, _, _) in enumerate(SUBCASE_LIST):
        if heuristic not in wanted:
            continue
        for k, row in enumerate(_sample_subcase(idx, n, seed, split)):
            records.append((id_offset + idx * _ID_STRIDE + k, *row))
    return _frame(records)


def generate(n_per_subcase: int = 100, seed: int = 0, heuristics=None) -> pd.DataFrame:
    """Generate a HANS-style NLI diagnostic set (our templates, not the real HANS).

    Parameters
    ----------
    n_per_subcase:
        Unique examples per subcase (30 subcases in all; at most 30,000).  Raises
        ``ValueError`` if a subcase cannot supply that many distinct examples.
    seed:
        Non-negative int; each subcase uses its own stream
        ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(subcase_index,)))``.
    heuristics:
        ``None`` (all), a heuristic name, or an iterable of names from
        :data:`HEURISTICS`.

    Returns
    -------
    pandas.DataFrame with columns ``id, premise, hypothesis, label, heuristic,
    subcase, template``; ``label`` is 0 (entailment) or 1 (non-entailment).  The
    ``id`` of the k-th example of subcase i is ``i * 30000 + k``, so ids are
    unique, below 1e6, and do not depend on ``heuristics``.  Rows are ordered as
    :data:`SUBCASE_LIST`.
    """
    return _generate(_check_n(n_per_subcase), _check_seed(seed), heuristics, None, 0)


# --------------------------------------------------------------------------- #
# Loading (generated splits or the real HANS from the Hub)
# --------------------------------------------------------------------------- #


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Try a TCP connection to huggingface.co:443, bounded in time (DNS included)."""
    result: dict[str, object] = {}

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
            result["err"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if result.get("ok"):
        return True, ""
    return False, str(result.get("err", f"no answer within {timeout + 2.0:.0f} s"))


def _hub_error(detail: str) -> HubUnavailableError:
    return HubUnavailableError(
        "could not load the real HANS from the Hugging Face Hub "
        f"({detail}). The real HANS needs internet access once (it is cached "
        "afterwards); use load_hans(source='generated') for the offline "
        "HANS-style set generated by repro.data.hans."
    )


def _load_hub(split: str, n_per_subcase) -> pd.DataFrame:
    hub_split = _HUB_SPLITS[split]
    if not os.environ.get("HF_HUB_OFFLINE"):
        ok, why = _hub_reachable()
        if not ok:
            raise _hub_error(f"huggingface.co:443 is unreachable: {why}")
    errors = []
    ds = None
    try:
        import datasets  # lazy: heavy, and only needed for the real HANS
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(f"the 'datasets' package is unavailable: {exc}") from exc
    for name in _HUB_NAMES:
        try:
            ds = datasets.load_dataset(name, split=hub_split)
            break
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if ds is None:
        raise _hub_error("; ".join(errors))
    hub = ds.to_pandas()
    df = pd.DataFrame({
        "id": np.arange(len(hub), dtype="int64"),
        "premise": hub["premise"].astype(object),
        "hypothesis": hub["hypothesis"].astype(object),
        "label": hub["label"].astype("int64"),
        "heuristic": hub["heuristic"].astype(object),
        "subcase": hub["subcase"].astype(object),
        "template": hub["template"].astype(object),
    })
    if n_per_subcase is not None:
        n = _check_n(n_per_subcase)
        df = df.groupby("subcase", sort=False, group_keys=False).head(n)
    return df.reset_index(drop=True)


def load_hans(split: str = "evaluation", n_per_subcase: int | None = None, seed: int = 0,
              source: str = "auto") -> pd.DataFrame:
    """Load a HANS-style split (generated, default) or the real HANS (``source="hub"``).

    Parameters
    ----------
    split:
        ``"evaluation"`` (alias ``"validation"``) or ``"train"``.
    n_per_subcase:
        Examples per subcase.  For generated data ``None`` means
        :data:`DEFAULT_N_PER_SUBCASE` (100) per subcase for each split, i.e.
        3,000 rows.  For the hub, ``None`` means every row; an int keeps the
        first ``n`` rows of each subcase.
    seed:
        Seed of the generator (ignored for the hub).
    source:
        ``"generated"`` -- our HANS-style templates (offline);
        ``"hub"`` -- the real HANS via ``datasets.load_dataset("hans")`` (falling
        back to ``"jhu-cogsci/hans"``); our ``"evaluation"`` maps to its
        ``"validation"`` split; ``id`` is the row index;
        ``"auto"`` -- the same as ``"generated"`` (never touches the network).

    The generated splits are disjoint: every premise is assigned to exactly one
    split by a stable hash of its text, and each split keeps only its own
    premises, so no (premise, hypothesis) pair -- indeed no premise -- occurs in
    both, whatever ``seed`` and ``n_per_subcase`` each side uses.  Evaluation ids
    lie in ``[0, 1e6)``; train ids are offset by :data:`TRAIN_ID_OFFSET`.

    Raises :class:`HubUnavailableError` when ``source="hub"`` and the Hub
    cannot be reached (checked with a 3 s connection probe unless
    ``HF_HUB_OFFLINE`` is set) or the load fails.
    """
    split_key = {"evaluation": "evaluation", "validation": "evaluation", "eval": "evaluation",
                 "train": "train"}.get(split)
    if split_key is None:
        raise ValueError(f"split must be 'evaluation' or 'train', got {split!r}")
    if source not in ("auto", "generated", "hub"):
        raise ValueError(f"source must be 'auto', 'generated' or 'hub', got {source!r}")
    if source == "hub":
        return _load_hub(split_key, n_per_subcase)
    n = DEFAULT_N_PER_SUBCASE if n_per_subcase is None else _check_n(n_per_subcase)
    offset = 0 if split_key == "evaluation" else TRAIN_ID_OFFSET
    return _generate(n, _check_seed(seed), None, split_key, offset)
