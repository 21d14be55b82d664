"""Tests for the HANS-style generator in ``repro.data.hans``."""

from __future__ import annotations

import re
import socket
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from repro.data import hans as H

N = 60  # examples per subcase in the shared fixture

ALL_SUBCASES = [s for _, _, s in H.SUBCASE_LIST]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return H.generate(n_per_subcase=N, seed=0)


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    return H.load_hans("evaluation"), H.load_hans("train")


def _tokens(sentence: str) -> list[str]:
    return sentence.lower().translate(str.maketrans({c: " " for c in string.punctuation})).split()


def _contiguous(needle: list[str], haystack: list[str]) -> bool:
    k = len(needle)
    return any(haystack[i:i + k] == needle for i in range(len(haystack) - k + 1))


def _rows(frame, subcase):
    rows = frame[frame["subcase"] == subcase]
    assert len(rows) == N
    return rows


# --------------------------------------------------------------------------- #
# Inventory and schema
# --------------------------------------------------------------------------- #


def test_constants_and_subcase_inventory():
    assert (H.ENTAILMENT, H.NON_ENTAILMENT) == (0, 1)
    assert H.LABELS == ("entailment", "non-entailment")
    assert set(H.SUBCASES) == {"lexical_overlap", "subsequence", "constituent"}
    for heuristic, by_label in H.SUBCASES.items():
        assert set(by_label) == {"entailment", "non-entailment"}
        for label, names in by_label.items():
            assert len(names) == 5
            for name in names:
                assert name[0] == heuristic[0]
                assert name[1] == ("e" if label == "entailment" else "n")
    assert len(ALL_SUBCASES) == len(set(ALL_SUBCASES)) == 30
    for name in ("ln_subject/object_swap", "le_relative_clause", "sn_NP/S",
                 "se_adjective", "cn_adverb", "ce_conjunction"):
        assert name in ALL_SUBCASES
    for heuristic, label, subcase in H.SUBCASE_LIST:
        assert subcase in H.SUBCASES[heuristic][H.LABELS[label]]


def test_schema_and_counts(frame):
    assert list(frame.columns) == list(H.COLUMNS)
    assert len(frame) == 30 * N
    assert frame["id"].dtype == "int64" and frame["label"].dtype == "int64"
    counts = frame.groupby("subcase").size()
    assert set(counts.index) == set(ALL_SUBCASES)
    assert (counts == N).all()
    assert frame["id"].is_unique
    assert frame["id"].between(0, 999_999).all()
    assert frame["label"].isin([0, 1]).all()
    # each template belongs to exactly one subcase
    assert (frame.groupby("template")["subcase"].nunique() == 1).all()


@pytest.mark.parametrize("subcase", ALL_SUBCASES)
def test_label_and_heuristic_match_subcase(frame, subcase):
    rows = _rows(frame, subcase)
    expected_label = H.ENTAILMENT if subcase[1] == "e" else H.NON_ENTAILMENT
    assert (rows["label"] == expected_label).all()
    expected_heuristic = {"l": "lexical_overlap", "s": "subsequence", "c": "constituent"}[subcase[0]]
    assert (rows["heuristic"] == expected_heuristic).all()


def test_sentence_form(frame):
    for col in ("premise", "hypothesis"):
        for s in frame[col]:
            assert s[0].isupper(), s
            assert s.endswith(".") and s.count(".") == 1, s
            assert "  " not in s and s == s.strip(), s


# --------------------------------------------------------------------------- #
# Defining properties of the heuristics
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("subcase", ALL_SUBCASES)
def test_full_lexical_overlap(frame, subcase):
    # HANS property: every hypothesis word occurs in the premise (all 30 subcases)
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        assert set(_tokens(h)) <= set(_tokens(p)), (p, h)


@pytest.mark.parametrize("subcase", [s for s in ALL_SUBCASES if s[0] in "sc"])
def test_hypothesis_is_contiguous_subsequence(frame, subcase):
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        assert _contiguous(_tokens(h), _tokens(p)), (p, h)


_CLAUSE_OPENERS = set(H.VOCAB["entailing_subordinators"]) | set(H.VOCAB["non_entailing_subordinators"]) \
    | set(H.VOCAB["entailing_adverbs"]) | set(H.VOCAB["non_entailing_adverbs"]) | {"and", "or"}


def _clauses(premise: str) -> list[str]:
    """Complete clauses of a constituent premise: split at commas, strip a
    leading subordinator/adverb/conjunction, and take what follows 'that'."""
    out = []
    for part in premise.lower().rstrip(".").split(","):
        words = part.split()
        if words and words[0] in _CLAUSE_OPENERS:
            words = words[1:]
        if "that" in words:
            words = words[words.index("that") + 1:]
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize("subcase", [s for s in ALL_SUBCASES if s[0] == "c"])
def test_constituent_hypothesis_is_a_clause(frame, subcase):
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        assert h.lower().rstrip(".") in _clauses(p), (p, h)


@pytest.mark.parametrize("subcase", [s for s in ALL_SUBCASES if s[0] == "s"])
def test_subsequence_hypothesis_is_not_a_clause(frame, subcase):
    # subsequence cases are not (all) covered by the constituent heuristic:
    # their premises have no comma / 'that'-clause that equals the hypothesis
    hits = sum(
        h.lower().rstrip(".") in _clauses(p)
        for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False)
    )
    assert hits == 0


# --------------------------------------------------------------------------- #
# Generation rules
# --------------------------------------------------------------------------- #


def test_no_duplicate_pairs(frame, splits):
    for df in (frame, *splits):
        assert not df.duplicated(["premise", "hypothesis"]).any()


_SINGULAR = {pl: sg for sg, pl in H.VOCAB["nouns"]}


def _independent_content_words(sentence: str) -> list[str]:
    text = " ".join(_tokens(sentence))
    text = text.replace("in front of", "in_front_of").replace("next to", "next_to")
    return [_SINGULAR.get(w, w) for w in text.split() if w != "the"]


def test_no_repeated_content_words_in_premise(frame, splits):
    for df in (frame, *splits):
        for p in df["premise"]:
            counts = Counter(_independent_content_words(p))
            assert max(counts.values()) == 1, p
            assert H.content_words(p) == _independent_content_words(p)


def test_content_words_rule():
    assert H.content_words("The judge in front of the doctors saw the doctor.") == [
        "judge", "in_front_of", "doctor", "saw", "doctor"]
    assert H.content_words("Since the secretaries left, the secretary ran.").count("secretary") == 2


def test_determinism_and_seed_sensitivity():
    a = H.generate(15, seed=7)
    b = H.generate(15, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = H.generate(15, seed=8)
    assert list(a.columns) == list(c.columns) and len(a) == len(c)
    assert (a["premise"] != c["premise"]).mean() > 0.5


def test_heuristic_filter_gives_the_same_rows(frame):
    sub = H.generate(N, seed=0, heuristics="constituent")
    assert set(sub["heuristic"]) == {"constituent"} and len(sub) == 10 * N
    full = frame[frame["heuristic"] == "constituent"].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, full)
    two = H.generate(5, seed=0, heuristics=["lexical_overlap", "subsequence"])
    assert set(two["heuristic"]) == {"lexical_overlap", "subsequence"} and len(two) == 100


def test_invalid_arguments():
    with pytest.raises(ValueError):
        H.generate(5, heuristics="bag_of_words")
    with pytest.raises(ValueError):
        H.generate(-1)
    with pytest.raises(ValueError):
        H.generate(5, seed=-3)
    with pytest.raises(ValueError):
        H.load_hans("test")
    with pytest.raises(ValueError):
        H.load_hans(source="somewhere")
    assert H.generate(0).empty and list(H.generate(0).columns) == list(H.COLUMNS)


def test_unattainable_n_raises_quickly():
    cap = H.subcase_capacity("se_understood_object")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="se_understood_object"):
        H.generate(cap + 1, heuristics="subsequence")
    # attainable in principle but not within one split (about half the premises): attempt cap
    with pytest.raises(ValueError, match="se_understood_object"):
        H.load_hans("train", n_per_subcase=cap - 20)
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------- #
# Splits
# --------------------------------------------------------------------------- #


def test_splits_sizes_ids_and_disjointness(splits):
    ev, tr = splits
    assert len(ev) == len(tr) == 30 * H.DEFAULT_N_PER_SUBCASE
    for df in (ev, tr):
        assert list(df.columns) == list(H.COLUMNS)
        assert (df.groupby("subcase").size() == H.DEFAULT_N_PER_SUBCASE).all()
    assert ev["id"].between(0, 999_999).all()
    assert (tr["id"] >= H.TRAIN_ID_OFFSET).all()
    assert pd.concat([ev["id"], tr["id"]]).is_unique
    pairs_ev = set(zip(ev["premise"], ev["hypothesis"]))
    pairs_tr = set(zip(tr["premise"], tr["hypothesis"]))
    assert not pairs_ev & pairs_tr
    assert not set(ev["premise"]) & set(tr["premise"])


def test_splits_disjoint_for_any_seed_and_size():
    ev = H.load_hans("evaluation", n_per_subcase=30, seed=1)
    tr = H.load_hans("train", n_per_subcase=50, seed=2)
    assert not set(zip(ev["premise"], ev["hypothesis"])) & set(zip(tr["premise"], tr["hypothesis"]))
    assert not set(ev["premise"]) & set(tr["premise"])


def test_load_hans_is_deterministic_and_auto_is_generated(splits):
    ev, _ = splits
    pd.testing.assert_frame_equal(ev, H.load_hans("evaluation", source="generated"))
    pd.testing.assert_frame_equal(H.load_hans("train", n_per_subcase=5, source="auto"),
                                  H.load_hans("train", n_per_subcase=5, source="generated"))
    pd.testing.assert_frame_equal(H.load_hans("validation", n_per_subcase=5),
                                  H.load_hans("evaluation", n_per_subcase=5))


# --------------------------------------------------------------------------- #
# Hub path (no network here)
# --------------------------------------------------------------------------- #


def test_hub_raises_fast_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    t0 = time.perf_counter()
    with pytest.raises(H.HubUnavailableError) as info:
        H.load_hans("evaluation", source="hub")
    assert time.perf_counter() - t0 < 10
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    assert "internet" in msg and "generated" in msg


def test_hub_real_environment_is_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    try:
        df = H.load_hans("evaluation", n_per_subcase=2, source="hub")
    except H.HubUnavailableError:
        assert time.perf_counter() - t0 < 10
    else:  # network and the real HANS available: check the mapping instead
        assert list(df.columns) == list(H.COLUMNS)
        assert set(df["label"]) <= {0, 1}


def test_import_does_not_pull_datasets():
    root = Path(H.__file__).resolve().parents[2]
    code = "import sys, repro.data.hans; assert 'datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --------------------------------------------------------------------------- #
# Subcase-specific semantics: an independent regex spec of every subcase
# --------------------------------------------------------------------------- #


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_V = H.VOCAB
_CLS = {
    "N": _alt([w for pair in _V["nouns"] for w in pair]),
    "NPL": _alt([pl for _, pl in _V["nouns"]]),
    "VT": _alt([past for past, _ in _V["transitive_verbs"]]),
    "VPP": _alt([pp for past, pp in _V["transitive_verbs"] if past == pp]),
    "VI": _alt(_V["intransitive_verbs"]),
    "VNPS": _alt(_V["np_s_verbs"]),
    "VNPZ": _alt(_V["np_z_verbs"]),
    "SUBZ": _alt(_V["np_z_subordinators"]),
    "P": _alt(_V["prepositions"]),
    "R": "who|that",
    "BE": "was|were",
    "ADJ": _alt(_V["adjectives"]),
    "VUO": _alt([v for v, _ in _V["understood_object_verbs"]]),
    "OBJ": _alt([o for _, o in _V["understood_object_verbs"]]),
    "ADVE": _alt(_V["entailing_adverbs"]),
    "ADVN": _alt(_V["non_entailing_adverbs"]),
    "SUBE": _alt(_V["entailing_subordinators"]),
    "SUBN": _alt(_V["non_entailing_subordinators"]),
    "EMBE": _alt(_V["entailing_embedding_verbs"]),
    "EMBN": _alt(_V["non_entailing_embedding_verbs"]),
}
_N, _VT, _VI = _CLS["N"], _CLS["VT"], _CLS["VI"]
_CLS["CL"] = f"the (?:{_N}) (?:{_VI}|(?:{_VT}) the (?:{_N}))"

_REL_SUBJ = "the {a:N} {r:R} {v:VT} the {b:N} {w:VT} the {c:N}"
_REL_OBJ = "the {a:N} {r:R} the {b:N} {v:VT} {w:VT} the {c:N}"
_PASSIVE = "the {a:N} {be:BE} {v:VPP} by the {b:N}"
_IF = "{s:SUBN} {x:CL}, {y:CL}"
_SINCE = "{s:SUBE} {x:CL}, {y:CL}"

# subcase -> [(premise pattern, expected hypothesis), ...]; one must match each row
SPEC = {
    "ln_subject/object_swap": [("the {a:N} {v:VT} the {b:N}", "the {b} {v} the {a}")],
    "ln_preposition": [("the {a:N} {p:P} the {b:N} {v:VT} the {c:N}", "the {c} {v} the {b}")],
    "ln_relative_clause": [(_REL_SUBJ, "the {b} {w} the {a}"), (_REL_OBJ, "the {b} {w} the {c}")],
    "ln_passive": [(_PASSIVE, "the {a} {v} the {b}")],
    "ln_conjunction": [("the {a:N} {v:VT} the {b:N} and the {c:N}", "the {b} {v} the {c}"),
                       ("the {a:N} and the {b:N} {v:VT} the {c:N}", "the {c} {v} the {b}")],
    "le_relative_clause": [(_REL_OBJ, "the {b} {v} the {a}"), (_REL_SUBJ, "the {a} {v} the {b}")],
    "le_around_prepositional_phrase": [("the {a:N} {p:P} the {b:N} {v:VT} the {c:N}", "the {a} {v} the {c}")],
    "le_around_relative_clause": [(_REL_OBJ, "the {a} {w} the {c}"), (_REL_SUBJ, "the {a} {w} the {c}")],
    "le_conjunction": [("the {a:N} and the {b:N} {v:VT} the {c:N}", "the {b} {v} the {c}"),
                       ("the {a:N} {v:VT} the {b:N} and the {c:N}", "the {a} {v} the {c}")],
    "le_passive": [(_PASSIVE, "the {b} {v} the {a}")],
    "sn_NP/S": [("the {a:N} {s:VNPS} the {b:N} {v:VT} the {c:N}", "the {a} {s} the {b}"),
                ("the {a:N} {s:VNPS} the {b:N} {v:VI}", "the {a} {s} the {b}")],
    "sn_PP_on_subject": [("the {a:N} {p:P} the {b:N} {v:VI}", "the {b} {v}"),
                         ("the {a:N} {p:P} the {b:N} {v:VT} the {c:N}", "the {b} {v} the {c}")],
    "sn_relative_clause_on_subject": [(_REL_SUBJ, "the {b} {w} the {c}"),
                                      ("the {a:N} {r:R} {v:VT} the {b:N} {w:VI}", "the {b} {w}")],
    "sn_past_participle": [("the {a:N} {v:VPP} by the {b:N} {w:VI}", "the {b} {w}"),
                           ("the {a:N} {v:VPP} by the {b:N} {w:VT} the {c:N}", "the {b} {w} the {c}")],
    "sn_NP/Z": [("{s:SUBZ} the {a:N} {z:VNPZ} the {b:N} {v:VT} the {c:N}", "the {a} {z} the {b}"),
                ("{s:SUBZ} the {a:N} {z:VNPZ} the {b:N} {v:VI}", "the {a} {z} the {b}")],
    "se_conjunction": [("the {a:N} and the {b:N} {v:VI}", "the {b} {v}"),
                       ("the {a:N} {v:VT} the {b:N} and the {c:N}", "the {a} {v} the {b}")],
    "se_adjective": [("{j:ADJ} {a:NPL} {v:VT} the {b:N}", "{a} {v} the {b}"),
                     ("{j:ADJ} {a:NPL} {v:VI}", "{a} {v}")],
    "se_understood_object": [("the {a:N} {v:VUO} the {o:OBJ}", "the {a} {v}")],
    "se_relative_clause_on_obj": [("the {a:N} {v:VT} the {b:N} {r:R} {w:VT} the {c:N}", "the {a} {v} the {b}"),
                                  ("the {a:N} {v:VT} the {b:N} {r:R} {w:VI}", "the {a} {v} the {b}")],
    "se_PP_on_obj": [("the {a:N} {v:VT} the {b:N} {p:P} the {c:N}", "the {a} {v} the {b}")],
    "cn_embedded_under_if": [(_IF, "{x}")],
    "cn_after_if_clause": [(_IF, "{y}")],
    "cn_embedded_under_verb": [("the {a:N} {e:EMBN} that {x:CL}", "{x}")],
    "cn_disjunction": [("{x:CL}, or {y:CL}", "{x}"), ("{x:CL}, or {y:CL}", "{y}")],
    "cn_adverb": [("{d:ADVN} {x:CL}", "{x}")],
    "ce_embedded_under_since": [(_SINCE, "{x}")],
    "ce_after_since_clause": [(_SINCE, "{y}")],
    "ce_embedded_under_verb": [("the {a:N} {e:EMBE} that {x:CL}", "{x}")],
    "ce_conjunction": [("{x:CL}, and {y:CL}", "{x}"), ("{x:CL}, and {y:CL}", "{y}")],
    "ce_adverb": [("{d:ADVE} {x:CL}", "{x}")],
}


def _compile(pattern: str) -> re.Pattern:
    return re.compile(re.sub(r"\{(\w+):(\w+)\}", lambda m: f"(?P<{m[1]}>{_CLS[m[2]]})", pattern))


_SPEC_RE = {s: [(_compile(p), h) for p, h in alts] for s, alts in SPEC.items()}


def test_spec_covers_all_subcases():
    assert set(SPEC) == set(ALL_SUBCASES)


@pytest.mark.parametrize("subcase", ALL_SUBCASES)
def test_subcase_semantics_regex_spec(frame, subcase):
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        p_low, h_low = p.lower()[:-1], h.lower()[:-1]
        ok = False
        for rx, fmt in _SPEC_RE[subcase]:
            m = rx.fullmatch(p_low)
            if m and fmt.format(**m.groupdict()) == h_low:
                ok = True
                break
        assert ok, (subcase, p, h)


def test_word_classes_that_decide_labels_are_disjoint():
    for a, b in (("entailing_adverbs", "non_entailing_adverbs"),
                 ("entailing_subordinators", "non_entailing_subordinators"),
                 ("entailing_embedding_verbs", "non_entailing_embedding_verbs")):
        assert not set(_V[a]) & set(_V[b]), (a, b)


def test_passives(frame):
    plural = {pl for _, pl in _V["nouns"]}
    for sub in ("ln_passive", "le_passive"):
        for p in _rows(frame, sub)["premise"]:
            assert (" were " in p or " was " in p) and " by " in p, p
            subject, be = p.split()[1], p.split()[2]
            assert be == ("were" if subject in plural else "was"), p
    # le_passive: the by-agent becomes the subject
    for p, h in _rows(frame, "le_passive")[["premise", "hypothesis"]].itertuples(index=False):
        assert h.split()[1] == p.rstrip(".").split()[-1]


def test_subject_object_swap(frame):
    for p, h in _rows(frame, "ln_subject/object_swap")[["premise", "hypothesis"]].itertuples(index=False):
        the1, subj, verb, the2, obj = _tokens(p)
        assert _tokens(h) == [the1, obj, verb, the2, subj]
        assert subj != obj


def test_adverb_cases(frame):
    for p in _rows(frame, "cn_adverb")["premise"]:
        assert p.split()[0].lower() in _V["non_entailing_adverbs"], p
    for p in _rows(frame, "ce_adverb")["premise"]:
        assert p.split()[0].lower() in _V["entailing_adverbs"], p
    for sub in ("cn_adverb", "ce_adverb"):
        for p, h in _rows(frame, sub)[["premise", "hypothesis"]].itertuples(index=False):
            rest = p.split(" ", 1)[1]
            assert h == rest[0].upper() + rest[1:], (p, h)


def test_subordinator_and_embedding_cases(frame):
    for sub in ("cn_embedded_under_if", "cn_after_if_clause"):
        assert all(p.split()[0].lower() in _V["non_entailing_subordinators"] for p in _rows(frame, sub)["premise"])
    for sub in ("ce_embedded_under_since", "ce_after_since_clause"):
        assert all(p.split()[0].lower() in _V["entailing_subordinators"] for p in _rows(frame, sub)["premise"])
    for sub, key in (("cn_embedded_under_verb", "non_entailing_embedding_verbs"),
                     ("ce_embedded_under_verb", "entailing_embedding_verbs")):
        for p in _rows(frame, sub)["premise"]:
            words = p.split()
            assert words[words.index("that") - 1] in _V[key], p
    for p in _rows(frame, "sn_NP/Z")["premise"]:
        assert "," not in p and p.split()[0].lower() in _V["np_z_subordinators"], p


def test_understood_object_pairs(frame):
    pairs = set(_V["understood_object_verbs"])
    for p, h in _rows(frame, "se_understood_object")[["premise", "hypothesis"]].itertuples(index=False):
        words = _tokens(p)
        assert (words[2], words[4]) in pairs, p
        assert _tokens(h) == words[:3]
