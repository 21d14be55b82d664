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

Two styles (``style=`` of :func:`generate`, :func:`load_hans`, :func:`identity_pairs`)
share the heuristics, the 30 subcase names, the labels and every structural
guarantee above; they differ in vocabulary and sentence shapes:

* ``"original"`` (default) -- HANS-like: professions (``the senator``), simple past
  (``The senator helped the managers.``), passives ``was/were`` + participle.
  Its output is fixed: changing this style changes published results.
* ``"snli"`` -- domain-matched to SNLI, for models trained on SNLI that cannot read
  the original style: people and animals (``the man``, ``the girl``, ``the dog``,
  ``the crowd``), everyday actions in the present progressive (``The man is holding
  the dog.``), places and objects (``on the beach``, ``a bike``), SNLI-like
  prepositions (``next to``, ``in front of``), present-tense factive / non-factive
  embedding verbs (``The woman knows that ...`` / ``thinks that ...``), present
  simple NP/S verbs (``The woman sees the man is running.``) and passives in the
  present progressive (``The dog is being held by the man.``).  Every premise
  contains ``is``/``are`` followed by an ``-ing`` word.  Verbs agree with their
  subjects; where a hypothesis gives a verb a new subject, the two nouns are drawn
  with the same number (so the hypothesis's ``is``/``are`` occurs in the premise),
  and a conjoined subject that becomes a hypothesis subject alone is plural.
  Exception to the progressive: the active hypotheses of ``ln_passive`` /
  ``le_passive`` are in the simple past (``The man held the dog.``), because the
  ``-ing`` form does not occur in a passive premise and full lexical overlap would
  fail otherwise (all their verbs have past tense = participle, as in HANS).
  The no-repeat rule also ignores ``a``, ``is``, ``are`` and counts every form of a
  vocabulary verb as that verb (``pushed`` = ``pushing``).

Ids: style ``"original"`` uses ids below :data:`SNLI_ID_OFFSET`; style ``"snli"``
adds :data:`SNLI_ID_OFFSET` to every id, so ids of the two styles never collide.
:func:`identity_pairs` gives premises repeated word for word as hypotheses
(label entailment): a sanity check that a model can read a style at all.
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

from repro.errors import InvalidParameterError, UnknownNameError

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
    "STYLES",
    "SNLI_VOCAB",
    "SNLI_TEMPLATES",
    "SNLI_ID_OFFSET",
    "IDENTITY_ID_OFFSET",
    "STYLE_VOCAB",
    "STYLE_TEMPLATES",
    "HubUnavailableError",
    "Template",
    "content_words",
    "subcase_capacity",
    "generate",
    "identity_pairs",
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
#: Every id of style ``"snli"`` is offset by this (ids of style ``"original"`` lie below it).
SNLI_ID_OFFSET = 10_000_000
#: Ids of :func:`identity_pairs` are ``style offset (+ TRAIN_ID_OFFSET for split="train")
#: + IDENTITY_ID_OFFSET + k``: above the 30 * 30,000 subcase ids, below the next block.
IDENTITY_ID_OFFSET = 900_000
_MAX_IDENTITY = 100_000

#: Generator styles: ``"original"`` (HANS-like vocabulary, the default) and ``"snli"``.
STYLES = ("original", "snli")

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
    ``obj``, ``past``) are reachable from templates as ``{SLOT.attr}``.  ``be`` is
    also the number of a noun or of a present-tense verb form (``is``: singular,
    ``are``/``were``: plural), used by agreement constraints."""

    __slots__ = ("text", "be", "pp", "obj", "past")

    def __init__(self, text: str, be: str = "", pp: str = "", obj: str = "", past: str = ""):
        self.text, self.be, self.pp, self.obj, self.past = text, be, pp, obj, past

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


def content_words(sentence: str, style: str = "original") -> list[str]:
    """Normalized words of ``sentence`` used by the no-repeat rule of ``style``.

    Lowercases, strips punctuation, joins multi-word prepositions into one token
    (``in front of`` -> ``in_front_of``), drops ``the`` and maps plural nouns of
    the vocabulary to their singular.  Style ``"snli"`` also drops ``a``, ``is``
    and ``are`` and maps every form of a vocabulary verb to one form
    (``pushed`` -> ``pushing``, ``know`` -> ``knows``).
    """
    return _content_words(sentence, _get_style(style))


def _content_words(sentence: str, st: "_Style") -> list[str]:
    text = " " + " ".join(sentence.lower().translate(_PUNCT_TABLE).split()) + " "
    for mwe in st.multiword:
        text = text.replace(f" {mwe} ", " " + mwe.replace(" ", "_") + " ")
    return [st.lemmas.get(w, w) for w in text.split() if w not in st.dropped]


def _has_repeat(sentence: str, st: "_Style") -> bool:
    counts = Counter(_content_words(sentence, st))
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
    participle, ``{V.past}`` the simple past and ``{U.obj}`` the understood object.
    ``agree`` lists ``(slot, earlier_slot)``: ``slot`` is drawn among the fillers
    whose number (``be``) equals that of ``earlier_slot``'s filler (style
    ``"snli"`` only; the original templates have none).
    """

    name: str
    heuristic: str
    label: int
    subcase: str
    slots: tuple[tuple[str, str], ...]
    premise: str
    hypothesis: str
    weight: float = 1.0
    agree: tuple[tuple[str, str], ...] = ()

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


def _add_constituent_templates(add, clause, embed_extra: tuple = ()) -> None:
    """The constituent subcases from clause shapes (shared by both styles; ``add`` appends a
    template, ``clause`` builds one clause, ``embed_extra`` are extra arguments of the two
    embedded-verb templates)."""
    for s1, s2 in product("it", repeat=2):
        (sl1, c1), (sl2, c2) = clause(s1, "a"), clause(s2, "b")
        add("cn_embedded_under_if", f"C:sub_nonent {sl1} {sl2}", f"{{C}} {c1}, {c2}", c1)
        add("cn_after_if_clause", f"C:sub_nonent {sl1} {sl2}", f"{{C}} {c1}, {c2}", c2)
        add("ce_embedded_under_since", f"C:sub_ent {sl1} {sl2}", f"{{C}} {c1}, {c2}", c1)
        add("ce_after_since_clause", f"C:sub_ent {sl1} {sl2}", f"{{C}} {c1}, {c2}", c2)
        for hyp in (c1, c2):
            add("cn_disjunction", f"{sl1} {sl2}", f"{c1}, or {c2}", hyp)
            add("ce_conjunction", f"{sl1} {sl2}", f"{c1}, and {c2}", hyp)
    for s in "it":
        sl, c = clause(s, "a")
        add("cn_embedded_under_verb", f"M:noun E:vemb_nonent {sl}", f"the {{M}} {{E}} that {c}", c, *embed_extra)
        add("ce_embedded_under_verb", f"M:noun E:vemb_ent {sl}", f"the {{M}} {{E}} that {c}", c, *embed_extra)
        add("cn_adverb", f"D:adv_nonent {sl}", f"{{D}} {c}", c)
        add("ce_adverb", f"D:adv_ent {sl}", f"{{D}} {c}", c)


_add_constituent_templates(_add, _clause)


def _build_templates(raw: list[tuple], categories: dict, prefix: str = "temp") -> tuple[Template, ...]:
    out = []
    for i, (subcase, slots, premise, hypothesis, weight, *rest) in enumerate(raw, start=1):
        slot_pairs = tuple(tuple(s.split(":")) for s in slots.split())
        for _, cat in slot_pairs:
            if cat not in categories:  # pragma: no cover - definition error
                raise KeyError(f"unknown slot category {cat!r} in {subcase}")
        agree = tuple(tuple(a.split("=")) for a in (rest[0] if rest else "").split())
        names = [n for n, _ in slot_pairs]
        for a, b in agree:  # the partner must be drawn first
            if a not in names or b not in names or names.index(b) >= names.index(a):  # pragma: no cover
                raise KeyError(f"bad agreement {a}={b} in {subcase}")
        out.append(Template(
            name=f"{prefix}{i}",
            heuristic=_HEURISTIC_OF_PREFIX[subcase[0]],
            label=ENTAILMENT if subcase[1] == "e" else NON_ENTAILMENT,
            subcase=subcase,
            slots=slot_pairs,
            premise=premise,
            hypothesis=hypothesis,
            weight=float(weight),
            agree=agree,
        ))
    return tuple(out)


#: All templates of style ``"original"``, in definition order (``template`` column = ``Template.name``).
TEMPLATES: tuple[Template, ...] = _build_templates(_RAW, _CATEGORIES)

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


# --------------------------------------------------------------------------- #
# Style "snli": SNLI-like vocabulary and sentence shapes (our own lists)
# --------------------------------------------------------------------------- #

# (singular, plural) people and animals
_SNLI_NOUNS = (
    ("man", "men"),
    ("woman", "women"),
    ("boy", "boys"),
    ("girl", "girls"),
    ("child", "children"),
    ("dog", "dogs"),
    ("worker", "workers"),
    ("player", "players"),
    ("crowd", "crowds"),
    ("person", "people"),
    ("cyclist", "cyclists"),
    ("musician", "musicians"),
    ("dancer", "dancers"),
    ("skier", "skiers"),
    ("lady", "ladies"),
    ("photographer", "photographers"),
)

# (present participle, simple past, passive participle); past == participle for all,
# so that the simple-past hypotheses of the passive subcases overlap fully
_SNLI_TRANSITIVE = (
    ("holding", "held", "held"),
    ("watching", "watched", "watched"),
    ("following", "followed", "followed"),
    ("chasing", "chased", "chased"),
    ("helping", "helped", "helped"),
    ("pushing", "pushed", "pushed"),
    ("pulling", "pulled", "pulled"),
    ("hugging", "hugged", "hugged"),
    ("kissing", "kissed", "kissed"),
    ("carrying", "carried", "carried"),
    ("greeting", "greeted", "greeted"),
    ("photographing", "photographed", "photographed"),
    ("feeding", "fed", "fed"),
    ("calling", "called", "called"),
    ("touching", "touched", "touched"),
    ("filming", "filmed", "filmed"),
    ("lifting", "lifted", "lifted"),
    ("passing", "passed", "passed"),
)

# intransitive verb phrases, some with an everyday place
_SNLI_INTRANSITIVE = (
    "running", "sleeping", "dancing", "smiling", "laughing", "jumping", "waiting",
    "running on the beach", "walking down the street", "sitting on a bench",
    "swimming in the lake", "playing in the park", "standing in the rain",
    "sitting on the grass", "waiting at the bus stop", "sleeping on the couch",
    "dancing on the stage", "walking in the snow",
)

# (3rd singular, plural) present-tense verbs taking a noun phrase or a clause:
# "The woman sees the man (is running)."
_SNLI_NP_S_VERBS = (
    ("knows", "know"), ("sees", "see"), ("hears", "hear"), ("notices", "notice"),
    ("remembers", "remember"), ("forgets", "forget"), ("believes", "believe"),
    ("understands", "understand"),
)

# optionally transitive verbs for the NP/Z garden path: "While the man is eating the dog ..."
_SNLI_NP_Z_VERBS = ("eating", "leaving", "drawing", "painting", "reading", "cooking", "visiting", "writing")
_SNLI_NP_Z_SUBORDINATORS = ("while", "when", "as", "because", "although", "since", "whenever")

_SNLI_PREPOSITIONS = ("next to", "in front of", "across from", "behind", "near", "beside", "with")

_SNLI_ADJECTIVES = (
    "young", "old", "little", "happy", "tall", "tired",
    "wet", "excited", "barefoot", "busy", "small", "blond",
)

_SNLI_ENTAILING_ADVERBS = ("clearly", "certainly", "definitely", "obviously", "undoubtedly", "evidently")
_SNLI_NON_ENTAILING_ADVERBS = ("probably", "maybe", "perhaps", "possibly", "supposedly", "hopefully",
                               "presumably")

_SNLI_NON_ENTAILING_SUBORDINATORS = ("if", "unless")
_SNLI_ENTAILING_SUBORDINATORS = ("since", "because", "although", "while")

# (3rd singular, plural) clause-embedding verbs (followed by "that"): factive / not factive
_SNLI_ENTAILING_EMBEDDING_VERBS = (
    ("knows", "know"), ("realizes", "realize"), ("notices", "notice"), ("remembers", "remember"),
    ("forgets", "forget"), ("sees", "see"), ("discovers", "discover"),
)
_SNLI_NON_ENTAILING_EMBEDDING_VERBS = (
    ("thinks", "think"), ("believes", "believe"), ("hopes", "hope"), ("says", "say"),
    ("claims", "claim"), ("assumes", "assume"), ("suspects", "suspect"), ("fears", "fear"),
)

# (present participle, understood object taking "a"): "The man is eating (a sandwich)."
_SNLI_UNDERSTOOD_OBJECT = (
    ("eating", "sandwich"),
    ("reading", "book"),
    ("drinking", "coffee"),
    ("painting", "picture"),
    ("riding", "bike"),
    ("writing", "letter"),
    ("cooking", "meal"),
    ("singing", "song"),
    ("surfing", "wave"),
    ("climbing", "rock"),
    ("smoking", "cigarette"),
    ("knitting", "scarf"),
)

#: Public, read-only view of the word lists of style ``"snli"`` (same keys as :data:`VOCAB`;
#: ``transitive_verbs`` are ``(present participle, past, participle)``, ``np_s_verbs`` and
#: the embedding verbs ``(3rd singular, plural)``, ``intransitive_verbs`` whole phrases).
SNLI_VOCAB = {
    "nouns": _SNLI_NOUNS,
    "transitive_verbs": _SNLI_TRANSITIVE,
    "intransitive_verbs": _SNLI_INTRANSITIVE,
    "np_s_verbs": _SNLI_NP_S_VERBS,
    "np_z_verbs": _SNLI_NP_Z_VERBS,
    "np_z_subordinators": _SNLI_NP_Z_SUBORDINATORS,
    "prepositions": _SNLI_PREPOSITIONS,
    "adjectives": _SNLI_ADJECTIVES,
    "relativizers": _RELATIVIZERS,
    "entailing_adverbs": _SNLI_ENTAILING_ADVERBS,
    "non_entailing_adverbs": _SNLI_NON_ENTAILING_ADVERBS,
    "entailing_subordinators": _SNLI_ENTAILING_SUBORDINATORS,
    "non_entailing_subordinators": _SNLI_NON_ENTAILING_SUBORDINATORS,
    "entailing_embedding_verbs": _SNLI_ENTAILING_EMBEDDING_VERBS,
    "non_entailing_embedding_verbs": _SNLI_NON_ENTAILING_EMBEDDING_VERBS,
    "understood_object_verbs": _SNLI_UNDERSTOOD_OBJECT,
}


def _numbered(pairs) -> tuple[_Filler, ...]:
    """Present-tense verb forms; ``be`` marks their number (``is`` singular, ``are`` plural)."""
    return tuple(_Filler(form, be=be) for sg, pl in pairs for form, be in ((sg, "is"), (pl, "are")))


_SNLI_CATEGORIES: dict[str, tuple[_Filler, ...]] = {
    "noun": tuple(
        _Filler(form, be=be)
        for sg, pl in _SNLI_NOUNS
        for form, be in ((sg, "is"), (pl, "are"))
    ),
    "noun_pl": tuple(_Filler(pl, be="are") for _, pl in _SNLI_NOUNS),
    "vt": tuple(_Filler(ing, pp=pp, past=past) for ing, past, pp in _SNLI_TRANSITIVE),
    "vt_reg": tuple(_Filler(ing, pp=pp, past=past) for ing, past, pp in _SNLI_TRANSITIVE if past == pp),
    "vi": _words(_SNLI_INTRANSITIVE),
    "v_nps": _numbered(_SNLI_NP_S_VERBS),
    "v_npz": _words(_SNLI_NP_Z_VERBS),
    "sub_npz": _words(_SNLI_NP_Z_SUBORDINATORS),
    "prep": _words(_SNLI_PREPOSITIONS),
    "adj": _words(_SNLI_ADJECTIVES),
    "rel": _words(_RELATIVIZERS),
    "adv_ent": _words(_SNLI_ENTAILING_ADVERBS),
    "adv_nonent": _words(_SNLI_NON_ENTAILING_ADVERBS),
    "sub_ent": _words(_SNLI_ENTAILING_SUBORDINATORS),
    "sub_nonent": _words(_SNLI_NON_ENTAILING_SUBORDINATORS),
    "vemb_ent": _numbered(_SNLI_ENTAILING_EMBEDDING_VERBS),
    "vemb_nonent": _numbered(_SNLI_NON_ENTAILING_EMBEDDING_VERBS),
    "v_uo": tuple(_Filler(v, obj=o) for v, o in _SNLI_UNDERSTOOD_OBJECT),
}

# no-repeat rule of style "snli": every vocabulary form -> one form per word
_SNLI_LEMMAS: dict[str, str] = {pl: sg for sg, pl in _SNLI_NOUNS}
_SNLI_LEMMAS.update({f: ing for ing, past, pp in _SNLI_TRANSITIVE for f in (past, pp)})
for _pairs in (_SNLI_NP_S_VERBS, _SNLI_ENTAILING_EMBEDDING_VERBS, _SNLI_NON_ENTAILING_EMBEDDING_VERBS):
    _SNLI_LEMMAS.update({pl: sg for sg, pl in _pairs})
_SNLI_MULTIWORD = tuple(sorted((p for p in _SNLI_PREPOSITIONS if " " in p), key=len, reverse=True))
_SNLI_DROPPED = frozenset({"the", "a", "is", "are"})

# (subcase, slots, premise, hypothesis, weight, agreements "SLOT=EARLIER ...")
_SNLI_RAW: list[tuple] = []


def _add_snli(subcase: str, slots: str, premise: str, hypothesis: str, agree: str = "") -> None:
    _SNLI_RAW.append((subcase, slots, premise, hypothesis, 1.0, agree))


_S_REL_SUBJ = ("N1:noun R:rel V1:vt N2:noun V2:vt N3:noun",
               "the {N1} {R} {N1.be} {V1} the {N2} {N1.be} {V2} the {N3}")
_S_REL_OBJ = ("N1:noun R:rel N2:noun V1:vt V2:vt N3:noun",
              "the {N1} {R} the {N2} {N2.be} {V1} {N1.be} {V2} the {N3}")
_S_PP = ("N1:noun P:prep N2:noun V:vt N3:noun", "the {N1} {P} the {N2} {N1.be} {V} the {N3}")
_S_PASSIVE = ("N1:noun V:vt_reg N2:noun", "the {N1} {N1.be} being {V.pp} by the {N2}")

# ---- lexical overlap: non-entailment ------------------------------------- #
_add_snli("ln_subject/object_swap", "N1:noun V:vt N2:noun",
          "the {N1} {N1.be} {V} the {N2}", "the {N2} {N2.be} {V} the {N1}", "N2=N1")
_add_snli("ln_preposition", *_S_PP, "the {N3} {N3.be} {V} the {N2}", "N3=N1")
_add_snli("ln_relative_clause", *_S_REL_SUBJ, "the {N2} {N2.be} {V2} the {N1}", "N2=N1")
_add_snli("ln_relative_clause", *_S_REL_OBJ, "the {N2} {N2.be} {V2} the {N3}")
_add_snli("ln_passive", *_S_PASSIVE, "the {N1} {V.past} the {N2}")
_add_snli("ln_conjunction", "N1:noun V:vt N2:noun N3:noun",
          "the {N1} {N1.be} {V} the {N2} and the {N3}", "the {N2} {N2.be} {V} the {N3}", "N2=N1")
_add_snli("ln_conjunction", "N1:noun N2:noun V:vt N3:noun_pl",
          "the {N1} and the {N2} are {V} the {N3}", "the {N3} are {V} the {N2}")

# ---- lexical overlap: entailment ----------------------------------------- #
_add_snli("le_relative_clause", *_S_REL_OBJ, "the {N2} {N2.be} {V1} the {N1}")
_add_snli("le_relative_clause", *_S_REL_SUBJ, "the {N1} {N1.be} {V1} the {N2}")
_add_snli("le_around_prepositional_phrase", *_S_PP, "the {N1} {N1.be} {V} the {N3}")
_add_snli("le_around_relative_clause", *_S_REL_OBJ, "the {N1} {N1.be} {V2} the {N3}")
_add_snli("le_around_relative_clause", *_S_REL_SUBJ, "the {N1} {N1.be} {V2} the {N3}")
_add_snli("le_conjunction", "N1:noun N2:noun_pl V:vt N3:noun",
          "the {N1} and the {N2} are {V} the {N3}", "the {N2} are {V} the {N3}")
_add_snli("le_conjunction", "N1:noun V:vt N2:noun N3:noun",
          "the {N1} {N1.be} {V} the {N2} and the {N3}", "the {N1} {N1.be} {V} the {N3}")
_add_snli("le_passive", *_S_PASSIVE, "the {N2} {V.past} the {N1}")

# ---- subsequence: non-entailment ----------------------------------------- #
_add_snli("sn_NP/S", "N1:noun S:v_nps N2:noun V:vt N3:noun",
          "the {N1} {S} the {N2} {N2.be} {V} the {N3}", "the {N1} {S} the {N2}", "S=N1")
_add_snli("sn_NP/S", "N1:noun S:v_nps N2:noun V:vi",
          "the {N1} {S} the {N2} {N2.be} {V}", "the {N1} {S} the {N2}", "S=N1")
_add_snli("sn_PP_on_subject", "N1:noun P:prep N2:noun V:vi",
          "the {N1} {P} the {N2} {N1.be} {V}", "the {N2} {N2.be} {V}", "N2=N1")
_add_snli("sn_PP_on_subject", *_S_PP, "the {N2} {N2.be} {V} the {N3}", "N2=N1")
_add_snli("sn_relative_clause_on_subject", *_S_REL_SUBJ, "the {N2} {N2.be} {V2} the {N3}", "N2=N1")
_add_snli("sn_relative_clause_on_subject", "N1:noun R:rel V1:vt N2:noun V2:vi",
          "the {N1} {R} {N1.be} {V1} the {N2} {N1.be} {V2}", "the {N2} {N2.be} {V2}", "N2=N1")
_add_snli("sn_past_participle", "N1:noun V1:vt_reg N2:noun V2:vi",
          "the {N1} {V1.pp} by the {N2} {N1.be} {V2}", "the {N2} {N2.be} {V2}", "N2=N1")
_add_snli("sn_past_participle", "N1:noun V1:vt_reg N2:noun V2:vt N3:noun",
          "the {N1} {V1.pp} by the {N2} {N1.be} {V2} the {N3}", "the {N2} {N2.be} {V2} the {N3}", "N2=N1")
_add_snli("sn_NP/Z", "C:sub_npz N1:noun Z:v_npz N2:noun V:vt N3:noun",
          "{C} the {N1} {N1.be} {Z} the {N2} {N2.be} {V} the {N3}", "the {N1} {N1.be} {Z} the {N2}")
_add_snli("sn_NP/Z", "C:sub_npz N1:noun Z:v_npz N2:noun V:vi",
          "{C} the {N1} {N1.be} {Z} the {N2} {N2.be} {V}", "the {N1} {N1.be} {Z} the {N2}")

# ---- subsequence: entailment --------------------------------------------- #
_add_snli("se_conjunction", "N1:noun N2:noun_pl V:vi",
          "the {N1} and the {N2} are {V}", "the {N2} are {V}")
_add_snli("se_conjunction", "N1:noun V:vt N2:noun N3:noun",
          "the {N1} {N1.be} {V} the {N2} and the {N3}", "the {N1} {N1.be} {V} the {N2}")
_add_snli("se_adjective", "A:adj N1:noun_pl V:vt N2:noun",
          "{A} {N1} are {V} the {N2}", "{N1} are {V} the {N2}")
_add_snli("se_adjective", "A:adj N1:noun_pl V:vi",
          "{A} {N1} are {V}", "{N1} are {V}")
_add_snli("se_understood_object", "N1:noun U:v_uo",
          "the {N1} {N1.be} {U} a {U.obj}", "the {N1} {N1.be} {U}")
_add_snli("se_relative_clause_on_obj", "N1:noun V1:vt N2:noun R:rel V2:vt N3:noun",
          "the {N1} {N1.be} {V1} the {N2} {R} {N2.be} {V2} the {N3}", "the {N1} {N1.be} {V1} the {N2}")
_add_snli("se_relative_clause_on_obj", "N1:noun V1:vt N2:noun R:rel V2:vi",
          "the {N1} {N1.be} {V1} the {N2} {R} {N2.be} {V2}", "the {N1} {N1.be} {V1} the {N2}")
_add_snli("se_PP_on_obj", "N1:noun V:vt N2:noun P:prep N3:noun",
          "the {N1} {N1.be} {V} the {N2} {P} the {N3}", "the {N1} {N1.be} {V} the {N2}")


# ---- constituent ---------------------------------------------------------- #
def _snli_clause(shape: str, tag: str) -> tuple[str, str]:
    """Slots and text of a progressive clause: ``i`` intransitive, ``t`` transitive."""
    if shape == "i":
        return f"{tag}N:noun {tag}V:vi", f"the {{{tag}N}} {{{tag}N.be}} {{{tag}V}}"
    return (f"{tag}N:noun {tag}V:vt {tag}O:noun",
            f"the {{{tag}N}} {{{tag}N.be}} {{{tag}V}} the {{{tag}O}}")


_add_constituent_templates(_add_snli, _snli_clause, embed_extra=("E=M",))

#: All templates of style ``"snli"`` (``template`` column = ``Template.name``, ``snli_temp<i>``).
SNLI_TEMPLATES: tuple[Template, ...] = _build_templates(_SNLI_RAW, _SNLI_CATEGORIES, prefix="snli_temp")
assert {t.subcase for t in SNLI_TEMPLATES} == set(_TEMPLATES_BY_SUBCASE)

#: style -> its word lists / its templates
STYLE_VOCAB = {"original": VOCAB, "snli": SNLI_VOCAB}
STYLE_TEMPLATES = {"original": TEMPLATES, "snli": SNLI_TEMPLATES}


@dataclass(frozen=True)
class _Style:
    """Everything that differs between styles."""

    name: str
    categories: dict
    by_subcase: dict
    lemmas: dict
    multiword: tuple
    dropped: frozenset
    id_offset: int


def _make_style(name: str, categories: dict, templates: tuple, lemmas: dict, multiword: tuple,
                dropped: frozenset, id_offset: int) -> _Style:
    by_subcase = {s: tuple(t for t in templates if t.subcase == s) for _, _, s in SUBCASE_LIST}
    return _Style(name, categories, by_subcase, lemmas, multiword, dropped, id_offset)


_STYLES = {
    "original": _make_style("original", _CATEGORIES, TEMPLATES, _PLURAL_TO_SINGULAR, _MULTIWORD,
                            frozenset({"the"}), 0),
    "snli": _make_style("snli", _SNLI_CATEGORIES, SNLI_TEMPLATES, _SNLI_LEMMAS, _SNLI_MULTIWORD,
                        _SNLI_DROPPED, SNLI_ID_OFFSET),
}
assert tuple(_STYLES) == STYLES


def _get_style(style) -> _Style:
    if not isinstance(style, str):
        raise InvalidParameterError(f"style must be a string, one of {list(STYLES)}; got {style!r}")
    try:
        return _STYLES[style]
    except KeyError:
        raise UnknownNameError(f"unknown style {style!r}; choose from {list(STYLES)}") from None


def subcase_capacity(subcase: str, style: str = "original") -> int:
    """Upper bound on the number of distinct pairs a subcase can produce
    (sum over its templates of the product of slot-category sizes; fillers that
    break the no-repeat rule or an agreement constraint are not subtracted)."""
    st = _get_style(style)
    total = 0
    for t in st.by_subcase[subcase]:
        k = 1
        for _, cat in t.slots:
            k *= len(st.categories[cat])
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


def _sample_subcase(subcase_index: int, n: int, seed: int, split: str | None, st: _Style) -> list[tuple]:
    heuristic, label, subcase = SUBCASE_LIST[subcase_index]
    templates = st.by_subcase[subcase]
    capacity = subcase_capacity(subcase, st.name)
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
        agree = dict(t.agree)
        fillers = {}
        for name, cat in t.slots:
            options = st.categories[cat]
            if name in agree:  # same number as the partner slot (style "snli" only)
                number = fillers[agree[name]].be
                options = tuple(f for f in options if f.be == number)
            fillers[name] = options[int(rng.integers(len(options)))]
        premise, hypothesis = t.render(fillers)
        key = (premise, hypothesis)
        if key in seen or _has_repeat(premise, st):
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


def _generate(n: int, seed: int, heuristics, split: str | None, id_offset: int,
              st: _Style | None = None) -> pd.DataFrame:
    st = _STYLES["original"] if st is None else st
    wanted = set(_normalize_heuristics(heuristics))
    for _, _, subcase in SUBCASE_LIST:  # fail fast, before any sampling
        if _HEURISTIC_OF_PREFIX[subcase[0]] in wanted and n > subcase_capacity(subcase, st.name):
            raise ValueError(
                f"n_per_subcase={n} is unattainable for subcase {subcase!r}: its templates "
                f"yield at most {subcase_capacity(subcase, st.name)} distinct examples; use a smaller "
                "n_per_subcase."
            )
    records = []
    for idx, (heuristic, _, _) in enumerate(SUBCASE_LIST):
        if heuristic not in wanted:
            continue
        for k, row in enumerate(_sample_subcase(idx, n, seed, split, st)):
            records.append((st.id_offset + id_offset + idx * _ID_STRIDE + k, *row))
    return _frame(records)


def generate(n_per_subcase: int = 100, seed: int = 0, heuristics=None, style: str = "original") -> pd.DataFrame:
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
    style:
        ``"original"`` (default; HANS-like vocabulary, simple past) or ``"snli"``
        (SNLI-like people, animals, places, present progressive); see the module
        docstring.  Both give the same subcases, labels and guarantees.  Raises
        :class:`~repro.errors.UnknownNameError` for another name.

    Returns
    -------
    pandas.DataFrame with columns ``id, premise, hypothesis, label, heuristic,
    subcase, template``; ``label`` is 0 (entailment) or 1 (non-entailment).  The
    ``id`` of the k-th example of subcase i is ``i * 30000 + k`` (plus
    :data:`SNLI_ID_OFFSET` for style ``"snli"``), so ids are unique, below 1e6
    (style ``"original"``) or in ``[SNLI_ID_OFFSET, SNLI_ID_OFFSET + 1e6)``
    (style ``"snli"``), and do not depend on ``heuristics``.  Rows are ordered as
    :data:`SUBCASE_LIST`.
    """
    st = _get_style(style)
    return _generate(_check_n(n_per_subcase), _check_seed(seed), heuristics, None, 0, st)


def identity_pairs(n: int = 300, seed: int = 0, style: str = "original",
                   split: str | None = None) -> pd.DataFrame:
    """Premises of ``style`` repeated word for word as hypotheses (label entailment).

    A sanity check that a model can read a style at all: an NLI model that reads
    the sentences calls (almost) every such pair entailment.

    The premises are the first ``n`` distinct premises of :func:`generate`
    (``seed``, ``style``; restricted to the premises of ``split`` -- ``None``,
    ``"evaluation"`` or ``"train"`` -- as in :func:`load_hans`) taken round-robin
    over the 30 subcases (first example of every subcase, then the second, ...),
    so all templates are represented.  Deterministic per ``seed``.

    Returns the :data:`COLUMNS` frame with ``hypothesis == premise``, ``label`` 0,
    ``heuristic`` and ``subcase`` ``"identity"`` and ``template`` the name of the
    template the premise came from.  ``id`` is ``IDENTITY_ID_OFFSET + k`` plus
    the style's offset (:data:`SNLI_ID_OFFSET` for ``"snli"``) plus
    :data:`TRAIN_ID_OFFSET` for ``split="train"``: it collides with no id of
    :func:`generate` / :func:`load_hans`.  ``n`` is at most 100,000.
    """
    st = _get_style(style)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= _MAX_IDENTITY:
        raise InvalidParameterError(f"n must be an int in [0, {_MAX_IDENTITY}], got {n!r}")
    n, seed = int(n), _check_seed(seed)
    split_key = None if split is None else _split_key(split)
    offset = IDENTITY_ID_OFFSET + (TRAIN_ID_OFFSET if split_key == "train" else 0)
    k = max(1, -(-n // len(SUBCASE_LIST)))
    while True:
        try:
            df = _generate(k, seed, None, split_key, 0, st)
        except ValueError as exc:
            raise InvalidParameterError(
                f"cannot find n={n} distinct premises of style {style!r}"
                f"{'' if split_key is None else f' in split {split_key!r}'}: {exc}"
            ) from None
        local = df["id"] - st.id_offset
        order = np.lexsort((local // _ID_STRIDE, local % _ID_STRIDE))  # round-robin over subcases
        df = df.iloc[order].drop_duplicates("premise")
        if len(df) >= n:
            break
        k *= 2
    df = df.head(n)
    records = [
        (st.id_offset + offset + i, p, p, ENTAILMENT, "identity", "identity", t)
        for i, (p, t) in enumerate(zip(df["premise"], df["template"]))
    ]
    return _frame(records)


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


def _split_key(split) -> str:
    split_key = {"evaluation": "evaluation", "validation": "evaluation", "eval": "evaluation",
                 "train": "train"}.get(split) if isinstance(split, str) else None
    if split_key is None:
        raise ValueError(f"split must be 'evaluation' or 'train', got {split!r}")
    return split_key


def load_hans(split: str = "evaluation", n_per_subcase: int | None = None, seed: int = 0,
              source: str = "auto", style: str = "original") -> pd.DataFrame:
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
    style:
        Generator style, ``"original"`` (default) or ``"snli"`` (see
        :func:`generate`).  The real HANS has one style only: ``source="hub"``
        with ``style="snli"`` raises :class:`~repro.errors.InvalidParameterError`.

    The generated splits are disjoint: every premise is assigned to exactly one
    split by a stable hash of its text, and each split keeps only its own
    premises, so no (premise, hypothesis) pair -- indeed no premise -- occurs in
    both, whatever ``seed`` and ``n_per_subcase`` each side uses.  Evaluation ids
    lie in ``[0, 1e6)``; train ids are offset by :data:`TRAIN_ID_OFFSET`; style
    ``"snli"`` adds :data:`SNLI_ID_OFFSET` to both.

    Raises :class:`HubUnavailableError` when ``source="hub"`` and the Hub
    cannot be reached (checked with a 3 s connection probe unless
    ``HF_HUB_OFFLINE`` is set) or the load fails.
    """
    split_key = _split_key(split)
    if source not in ("auto", "generated", "hub"):
        raise ValueError(f"source must be 'auto', 'generated' or 'hub', got {source!r}")
    st = _get_style(style)
    if source == "hub":
        if st.name != "original":
            raise InvalidParameterError(
                f"style={style!r} exists only for generated data: the real HANS (source='hub') "
                "has its own sentences; use source='generated' (or 'auto') for style "
                f"{style!r}, or style='original' with source='hub'."
            )
        return _load_hub(split_key, n_per_subcase)
    n = DEFAULT_N_PER_SUBCASE if n_per_subcase is None else _check_n(n_per_subcase)
    offset = 0 if split_key == "evaluation" else TRAIN_ID_OFFSET
    return _generate(n, _check_seed(seed), None, split_key, offset, st)
