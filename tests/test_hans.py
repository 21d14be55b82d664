"""Tests for the HANS-style generator in ``repro.data.hans``.

Fixtures are parametrized over both styles (``original`` and ``snli``): every
property test runs on both; tests named ``*snli*`` are specific to the
domain-matched style."""

from __future__ import annotations

import hashlib
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
from repro.errors import InvalidParameterError, UnknownNameError

N = 60  # examples per subcase in the shared fixture

ALL_SUBCASES = [s for _, _, s in H.SUBCASE_LIST]
OFFSET = {"original": 0, "snli": H.SNLI_ID_OFFSET}


@pytest.fixture(scope="module", params=H.STYLES)
def style(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def frame(style) -> pd.DataFrame:
    return H.generate(n_per_subcase=N, seed=0, style=style)


@pytest.fixture(scope="module")
def splits(style) -> tuple[pd.DataFrame, pd.DataFrame]:
    return H.load_hans("evaluation", style=style), H.load_hans("train", style=style)


def _forms(entries) -> set[str]:
    """All word forms of a vocabulary list (entries are strings or tuples of forms)."""
    return {w for e in entries for w in ((e,) if isinstance(e, str) else e)}


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


def test_schema_and_counts(frame, style):
    assert list(frame.columns) == list(H.COLUMNS)
    assert len(frame) == 30 * N
    assert frame["id"].dtype == "int64" and frame["label"].dtype == "int64"
    counts = frame.groupby("subcase").size()
    assert set(counts.index) == set(ALL_SUBCASES)
    assert (counts == N).all()
    assert frame["id"].is_unique
    assert frame["id"].between(OFFSET[style], OFFSET[style] + H.IDENTITY_ID_OFFSET - 1).all()
    assert frame["label"].isin([0, 1]).all()
    # each template belongs to exactly one subcase, and to the style's template list
    assert (frame.groupby("template")["subcase"].nunique() == 1).all()
    names = {t.name: t.subcase for t in H.STYLE_TEMPLATES[style]}
    assert all(names[t] == s for t, s in zip(frame["template"], frame["subcase"]))


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


_CLAUSE_OPENERS = {
    style: set(v["entailing_subordinators"]) | set(v["non_entailing_subordinators"])
    | set(v["entailing_adverbs"]) | set(v["non_entailing_adverbs"]) | {"and", "or"}
    for style, v in H.STYLE_VOCAB.items()
}


def _clauses(premise: str, style: str) -> list[str]:
    """Complete clauses of a constituent premise: split at commas, strip a
    leading subordinator/adverb/conjunction, and take what follows 'that'."""
    out = []
    for part in premise.lower().rstrip(".").split(","):
        words = part.split()
        if words and words[0] in _CLAUSE_OPENERS[style]:
            words = words[1:]
        if "that" in words:
            words = words[words.index("that") + 1:]
        out.append(" ".join(words))
    return out


@pytest.mark.parametrize("subcase", [s for s in ALL_SUBCASES if s[0] == "c"])
def test_constituent_hypothesis_is_a_clause(frame, style, subcase):
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        assert h.lower().rstrip(".") in _clauses(p, style), (p, h)


@pytest.mark.parametrize("subcase", [s for s in ALL_SUBCASES if s[0] == "s"])
def test_subsequence_hypothesis_is_not_a_clause(frame, style, subcase):
    # subsequence cases are not (all) covered by the constituent heuristic:
    # their premises have no comma / 'that'-clause that equals the hypothesis
    hits = sum(
        h.lower().rstrip(".") in _clauses(p, style)
        for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False)
    )
    assert hits == 0


# --------------------------------------------------------------------------- #
# Generation rules
# --------------------------------------------------------------------------- #


def test_no_duplicate_pairs(frame, splits):
    for df in (frame, *splits):
        assert not df.duplicated(["premise", "hypothesis"]).any()


# independent statement of the no-repeat rule of each style
_SINGULAR = {pl: sg for sg, pl in H.VOCAB["nouns"]}
_SNLI_NORMAL = {pl: sg for sg, pl in H.SNLI_VOCAB["nouns"]}
_SNLI_NORMAL.update({f: ing for ing, past, pp in H.SNLI_VOCAB["transitive_verbs"] for f in (past, pp)})
for _key in ("np_s_verbs", "entailing_embedding_verbs", "non_entailing_embedding_verbs"):
    _SNLI_NORMAL.update({pl: sg for sg, pl in H.SNLI_VOCAB[_key]})


def _independent_content_words(sentence: str, style: str = "original") -> list[str]:
    text = " ".join(_tokens(sentence))
    if style == "original":
        text = text.replace("in front of", "in_front_of").replace("next to", "next_to")
        return [_SINGULAR.get(w, w) for w in text.split() if w != "the"]
    for mwe in ("in front of", "next to", "across from"):
        text = text.replace(mwe, mwe.replace(" ", "_"))
    return [_SNLI_NORMAL.get(w, w) for w in text.split() if w not in ("the", "a", "is", "are")]


def test_no_repeated_content_words_in_premise(frame, splits, style):
    for df in (frame, *splits):
        for p in df["premise"]:
            counts = Counter(_independent_content_words(p, style))
            assert max(counts.values()) == 1, p
            assert H.content_words(p, style) == _independent_content_words(p, style)


def test_content_words_rule():
    assert H.content_words("The judge in front of the doctors saw the doctor.") == [
        "judge", "in_front_of", "doctor", "saw", "doctor"]
    assert H.content_words("Since the secretaries left, the secretary ran.").count("secretary") == 2
    assert H.content_words("The dog pushed by the men is pushing a man.", style="snli") == [
        "dog", "pushing", "by", "man", "pushing", "man"]
    assert H.content_words("The women next to the dog know the man is running.", style="snli") == [
        "woman", "next_to", "dog", "knows", "man", "running"]
    # the original rule is unchanged: 'is' and 'a' count there
    assert H.content_words("A man is running.") == ["a", "man", "is", "running"]


@pytest.mark.parametrize("style_name", H.STYLES)
def test_determinism_and_seed_sensitivity(style_name):
    a = H.generate(15, seed=7, style=style_name)
    b = H.generate(15, seed=7, style=style_name)
    pd.testing.assert_frame_equal(a, b)
    c = H.generate(15, seed=8, style=style_name)
    assert list(a.columns) == list(c.columns) and len(a) == len(c)
    assert (a["premise"] != c["premise"]).mean() > 0.5


def test_heuristic_filter_gives_the_same_rows(frame, style):
    # each subcase has its own random stream: other subcases do not change its rows
    sub = H.generate(N, seed=0, heuristics="constituent", style=style)
    assert set(sub["heuristic"]) == {"constituent"} and len(sub) == 10 * N
    full = frame[frame["heuristic"] == "constituent"].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, full)
    two = H.generate(5, seed=0, heuristics=["lexical_overlap", "subsequence"], style=style)
    assert set(two["heuristic"]) == {"lexical_overlap", "subsequence"} and len(two) == 100


def _digest(df: pd.DataFrame) -> str:
    text = "\n".join("\t".join(map(str, row)) for row in df.itertuples(index=False))
    return hashlib.sha256(text.encode()).hexdigest()


def test_original_style_output_is_frozen():
    # digests of the output before style="snli" existed: the default style must not change
    assert _digest(H.generate(20, seed=3)) == \
        "9efd1f05139d8fc08bcddeae99d34293b2563ea4362d2f34924341d5d0674cf4"
    assert _digest(H.load_hans("train", n_per_subcase=10, seed=1)) == \
        "fcdbbede16f283eff5b49812ddaea5dee9aa25a72252defec059ec90cfe1f661"
    pd.testing.assert_frame_equal(H.generate(5, seed=1), H.generate(5, seed=1, style="original"))


def test_styles_differ_and_ids_never_collide():
    frames = [H.generate(10, seed=0, style=s) for s in H.STYLES]
    frames += [H.load_hans(sp, n_per_subcase=10, style=s) for s in H.STYLES for sp in ("evaluation", "train")]
    frames += [H.identity_pairs(40, style=s, split=sp) for s in H.STYLES for sp in (None, "train")]
    ids = pd.concat([f["id"] for f in frames])
    # generate() and load_hans("evaluation") share ids by design (same id blocks); all else is disjoint
    assert pd.concat([frames[i]["id"] for i in range(2, len(frames))]).is_unique
    assert not set(frames[0]["id"]) & set(frames[1]["id"])
    assert ids.min() >= 0
    a, b = frames[0], frames[1]
    assert not set(a["premise"]) & set(b["premise"])
    assert (a["subcase"].tolist() == b["subcase"].tolist()) and (a["label"].tolist() == b["label"].tolist())


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
    for call in (lambda: H.generate(5, style="mnli"), lambda: H.load_hans(style="SNLI"),
                 lambda: H.identity_pairs(5, style="hans"), lambda: H.content_words("A b.", style="x"),
                 lambda: H.subcase_capacity("cn_adverb", style="")):
        with pytest.raises(UnknownNameError, match="style"):
            call()
    with pytest.raises(InvalidParameterError, match="style"):
        H.generate(5, style=None)
    for bad in (-1, 2.5, True, 100_001):
        with pytest.raises(InvalidParameterError):
            H.identity_pairs(bad)
    with pytest.raises(ValueError):
        H.identity_pairs(5, split="test")


@pytest.mark.parametrize("style_name", H.STYLES)
def test_unattainable_n_raises_quickly(style_name):
    cap = H.subcase_capacity("se_understood_object", style=style_name)
    assert cap == len(H.STYLE_VOCAB[style_name]["nouns"]) * 2 * len(
        H.STYLE_VOCAB[style_name]["understood_object_verbs"])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="se_understood_object"):
        H.generate(cap + 1, heuristics="subsequence", style=style_name)
    # attainable in principle but not within one split (about half the premises): attempt cap
    with pytest.raises(ValueError, match="se_understood_object"):
        H.load_hans("train", n_per_subcase=cap - 20, style=style_name)
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------- #
# Splits
# --------------------------------------------------------------------------- #


def test_splits_sizes_ids_and_disjointness(splits, style):
    ev, tr = splits
    assert len(ev) == len(tr) == 30 * H.DEFAULT_N_PER_SUBCASE
    for df in (ev, tr):
        assert list(df.columns) == list(H.COLUMNS)
        assert (df.groupby("subcase").size() == H.DEFAULT_N_PER_SUBCASE).all()
    off = OFFSET[style]
    assert ev["id"].between(off, off + 999_999).all()
    assert tr["id"].between(off + H.TRAIN_ID_OFFSET, off + H.TRAIN_ID_OFFSET + 999_999).all()
    assert pd.concat([ev["id"], tr["id"]]).is_unique
    pairs_ev = set(zip(ev["premise"], ev["hypothesis"]))
    pairs_tr = set(zip(tr["premise"], tr["hypothesis"]))
    assert not pairs_ev & pairs_tr
    assert not set(ev["premise"]) & set(tr["premise"])


@pytest.mark.parametrize("style_name", H.STYLES)
def test_splits_disjoint_for_any_seed_and_size(style_name):
    ev = H.load_hans("evaluation", n_per_subcase=30, seed=1, style=style_name)
    tr = H.load_hans("train", n_per_subcase=50, seed=2, style=style_name)
    assert not set(zip(ev["premise"], ev["hypothesis"])) & set(zip(tr["premise"], tr["hypothesis"]))
    assert not set(ev["premise"]) & set(tr["premise"])


def test_load_hans_is_deterministic_and_auto_is_generated(splits, style):
    ev, _ = splits
    pd.testing.assert_frame_equal(ev, H.load_hans("evaluation", source="generated", style=style))
    pd.testing.assert_frame_equal(H.load_hans("train", n_per_subcase=5, source="auto", style=style),
                                  H.load_hans("train", n_per_subcase=5, source="generated", style=style))
    pd.testing.assert_frame_equal(H.load_hans("validation", n_per_subcase=5, style=style),
                                  H.load_hans("evaluation", n_per_subcase=5, style=style))


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


def test_hub_rejects_snli_style_before_any_network(monkeypatch):
    def refuse(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("network touched")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(InvalidParameterError, match="source='generated'"):
        H.load_hans("evaluation", source="hub", style="snli")


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


# --- style "snli": an independent regex spec, with subject-verb agreement ----- #

_SV = H.SNLI_VOCAB
_SNLI_SG = {sg for sg, _ in _SV["nouns"]} | {sg for key in ("np_s_verbs", "entailing_embedding_verbs",
                                                            "non_entailing_embedding_verbs")
                                             for sg, _ in _SV[key]} | {"is"}
_SNLI_PL = {pl for _, pl in _SV["nouns"]} | {pl for key in ("np_s_verbs", "entailing_embedding_verbs",
                                                            "non_entailing_embedding_verbs")
                                             for _, pl in _SV[key]} | {"are"}
assert not _SNLI_SG & _SNLI_PL
_SCLS = {
    "N": _alt([w for pair in _SV["nouns"] for w in pair]),
    "NPL": _alt([pl for _, pl in _SV["nouns"]]),
    "BE": "is|are",
    "VT": _alt([ing for ing, _, _ in _SV["transitive_verbs"]]),
    "VPP": _alt([pp for _, past, pp in _SV["transitive_verbs"] if past == pp]),
    "VI": _alt(_SV["intransitive_verbs"]),
    "VNPS": _alt(_forms(_SV["np_s_verbs"])),
    "VNPZ": _alt(_SV["np_z_verbs"]),
    "SUBZ": _alt(_SV["np_z_subordinators"]),
    "P": _alt(_SV["prepositions"]),
    "R": "who|that",
    "ADJ": _alt(_SV["adjectives"]),
    "VUO": _alt([v for v, _ in _SV["understood_object_verbs"]]),
    "OBJ": _alt([o for _, o in _SV["understood_object_verbs"]]),
    "ADVE": _alt(_SV["entailing_adverbs"]),
    "ADVN": _alt(_SV["non_entailing_adverbs"]),
    "SUBE": _alt(_SV["entailing_subordinators"]),
    "SUBN": _alt(_SV["non_entailing_subordinators"]),
    "EMBE": _alt(_forms(_SV["entailing_embedding_verbs"])),
    "EMBN": _alt(_forms(_SV["non_entailing_embedding_verbs"])),
}
_SG_N = _alt([sg for sg, _ in _SV["nouns"]])
_VP = f"(?:{_SCLS['VI']}|(?:{_SCLS['VT']}) the (?:{_SCLS['N']}))"
# a progressive clause whose 'is'/'are' agrees with its subject
_SCLS["CL"] = f"the (?:{_SG_N}) is {_VP}|the (?:{_SCLS['NPL']}) are {_VP}"

_S_REL_SUBJ = "the {a:N} {r:R} {ba:BE} {v:VT} the {b:N} {ba} {w:VT} the {c:N}"
_S_REL_OBJ = "the {a:N} {r:R} the {b:N} {bb:BE} {v:VT} {ba:BE} {w:VT} the {c:N}"
_S_PP = "the {a:N} {p:P} the {b:N} {ba:BE} {v:VT} the {c:N}"
_S_PASSIVE = "the {a:N} {ba:BE} being {v:VPP} by the {b:N}"
_S_IF = "{s:SUBN} {x:CL}, {y:CL}"
_S_SINCE = "{s:SUBE} {x:CL}, {y:CL}"

# subcase -> [(premise pattern, expected hypothesis, "noun:verb ..." agreements in the premise)];
# "{g}" without a class in a premise pattern repeats group g
SNLI_SPEC = {
    "ln_subject/object_swap": [("the {a:N} {ba:BE} {v:VT} the {b:N}", "the {b} {ba} {v} the {a}", "a:ba")],
    "ln_preposition": [(_S_PP, "the {c} {ba} {v} the {b}", "a:ba")],
    "ln_relative_clause": [(_S_REL_SUBJ, "the {b} {ba} {w} the {a}", "a:ba"),
                           (_S_REL_OBJ, "the {b} {bb} {w} the {c}", "a:ba b:bb")],
    "ln_passive": [(_S_PASSIVE, "the {a} {v} the {b}", "a:ba")],
    "ln_conjunction": [("the {a:N} {ba:BE} {v:VT} the {b:N} and the {c:N}", "the {b} {ba} {v} the {c}", "a:ba"),
                       ("the {a:N} and the {b:N} are {v:VT} the {c:NPL}", "the {c} are {v} the {b}", "")],
    "le_relative_clause": [(_S_REL_OBJ, "the {b} {bb} {v} the {a}", "a:ba b:bb"),
                           (_S_REL_SUBJ, "the {a} {ba} {v} the {b}", "a:ba")],
    "le_around_prepositional_phrase": [(_S_PP, "the {a} {ba} {v} the {c}", "a:ba")],
    "le_around_relative_clause": [(_S_REL_OBJ, "the {a} {ba} {w} the {c}", "a:ba b:bb"),
                                  (_S_REL_SUBJ, "the {a} {ba} {w} the {c}", "a:ba")],
    "le_conjunction": [("the {a:N} and the {b:NPL} are {v:VT} the {c:N}", "the {b} are {v} the {c}", ""),
                       ("the {a:N} {ba:BE} {v:VT} the {b:N} and the {c:N}", "the {a} {ba} {v} the {c}", "a:ba")],
    "le_passive": [(_S_PASSIVE, "the {b} {v} the {a}", "a:ba")],
    "sn_NP/S": [("the {a:N} {s:VNPS} the {b:N} {bb:BE} {v:VT} the {c:N}", "the {a} {s} the {b}", "a:s b:bb"),
                ("the {a:N} {s:VNPS} the {b:N} {bb:BE} {v:VI}", "the {a} {s} the {b}", "a:s b:bb")],
    "sn_PP_on_subject": [("the {a:N} {p:P} the {b:N} {ba:BE} {v:VI}", "the {b} {ba} {v}", "a:ba"),
                         (_S_PP, "the {b} {ba} {v} the {c}", "a:ba")],
    "sn_relative_clause_on_subject": [(_S_REL_SUBJ, "the {b} {ba} {w} the {c}", "a:ba"),
                                      ("the {a:N} {r:R} {ba:BE} {v:VT} the {b:N} {ba} {w:VI}",
                                       "the {b} {ba} {w}", "a:ba")],
    "sn_past_participle": [("the {a:N} {v:VPP} by the {b:N} {ba:BE} {w:VI}", "the {b} {ba} {w}", "a:ba"),
                           ("the {a:N} {v:VPP} by the {b:N} {ba:BE} {w:VT} the {c:N}",
                            "the {b} {ba} {w} the {c}", "a:ba")],
    "sn_NP/Z": [("{s:SUBZ} the {a:N} {ba:BE} {z:VNPZ} the {b:N} {bb:BE} {v:VT} the {c:N}",
                 "the {a} {ba} {z} the {b}", "a:ba b:bb"),
                ("{s:SUBZ} the {a:N} {ba:BE} {z:VNPZ} the {b:N} {bb:BE} {v:VI}",
                 "the {a} {ba} {z} the {b}", "a:ba b:bb")],
    "se_conjunction": [("the {a:N} and the {b:NPL} are {v:VI}", "the {b} are {v}", ""),
                       ("the {a:N} {ba:BE} {v:VT} the {b:N} and the {c:N}", "the {a} {ba} {v} the {b}", "a:ba")],
    "se_adjective": [("{j:ADJ} {a:NPL} are {v:VT} the {b:N}", "{a} are {v} the {b}", ""),
                     ("{j:ADJ} {a:NPL} are {v:VI}", "{a} are {v}", "")],
    "se_understood_object": [("the {a:N} {ba:BE} {v:VUO} a {o:OBJ}", "the {a} {ba} {v}", "a:ba")],
    "se_relative_clause_on_obj": [
        ("the {a:N} {ba:BE} {v:VT} the {b:N} {r:R} {bb:BE} {w:VT} the {c:N}", "the {a} {ba} {v} the {b}",
         "a:ba b:bb"),
        ("the {a:N} {ba:BE} {v:VT} the {b:N} {r:R} {bb:BE} {w:VI}", "the {a} {ba} {v} the {b}", "a:ba b:bb")],
    "se_PP_on_obj": [("the {a:N} {ba:BE} {v:VT} the {b:N} {p:P} the {c:N}", "the {a} {ba} {v} the {b}", "a:ba")],
    "cn_embedded_under_if": [(_S_IF, "{x}", "")],
    "cn_after_if_clause": [(_S_IF, "{y}", "")],
    "cn_embedded_under_verb": [("the {a:N} {e:EMBN} that {x:CL}", "{x}", "a:e")],
    "cn_disjunction": [("{x:CL}, or {y:CL}", "{x}", ""), ("{x:CL}, or {y:CL}", "{y}", "")],
    "cn_adverb": [("{d:ADVN} {x:CL}", "{x}", "")],
    "ce_embedded_under_since": [(_S_SINCE, "{x}", "")],
    "ce_after_since_clause": [(_S_SINCE, "{y}", "")],
    "ce_embedded_under_verb": [("the {a:N} {e:EMBE} that {x:CL}", "{x}", "a:e")],
    "ce_conjunction": [("{x:CL}, and {y:CL}", "{x}", ""), ("{x:CL}, and {y:CL}", "{y}", "")],
    "ce_adverb": [("{d:ADVE} {x:CL}", "{x}", "")],
}


def _compile(pattern: str, classes: dict) -> re.Pattern:
    def group(m):
        return f"(?P<{m[1]}>{classes[m[2]]})" if m[2] else f"(?P={m[1]})"
    return re.compile(re.sub(r"\{(\w+)(?::(\w+))?\}", group, pattern))


_SPEC_RE = {
    "original": {s: [(_compile(p, _CLS), h, "") for p, h in alts] for s, alts in SPEC.items()},
    "snli": {s: [(_compile(p, _SCLS), h, agree) for p, h, agree in alts] for s, alts in SNLI_SPEC.items()},
}


def _same_number(noun: str, verb: str) -> bool:
    return (noun in _SNLI_SG and verb in _SNLI_SG) or (noun in _SNLI_PL and verb in _SNLI_PL)


def test_spec_covers_all_subcases():
    assert set(SPEC) == set(SNLI_SPEC) == set(ALL_SUBCASES)


@pytest.mark.parametrize("subcase", ALL_SUBCASES)
def test_subcase_semantics_regex_spec(frame, style, subcase):
    for p, h in _rows(frame, subcase)[["premise", "hypothesis"]].itertuples(index=False):
        p_low, h_low = p.lower()[:-1], h.lower()[:-1]
        ok = False
        for rx, fmt, agree in _SPEC_RE[style][subcase]:
            m = rx.fullmatch(p_low)
            if m and fmt.format(**m.groupdict()) == h_low:
                g = m.groupdict()
                assert all(_same_number(g[a], g[b]) for a, b in (x.split(":") for x in agree.split())), p
                ok = True
                break
        assert ok, (subcase, p, h)


def _vocab(style: str) -> dict:
    return H.STYLE_VOCAB[style]


@pytest.mark.parametrize("style_name", H.STYLES)
def test_word_classes_that_decide_labels_are_disjoint(style_name):
    v = _vocab(style_name)
    for a, b in (("entailing_adverbs", "non_entailing_adverbs"),
                 ("entailing_subordinators", "non_entailing_subordinators"),
                 ("entailing_embedding_verbs", "non_entailing_embedding_verbs")):
        assert not _forms(v[a]) & _forms(v[b]), (a, b)


def test_passives(frame, style):
    if style == "original":
        plural = {pl for _, pl in _V["nouns"]}
        for sub in ("ln_passive", "le_passive"):
            for p in _rows(frame, sub)["premise"]:
                assert (" were " in p or " was " in p) and " by " in p, p
                subject, be = p.split()[1], p.split()[2]
                assert be == ("were" if subject in plural else "was"), p
    else:  # present progressive passive; the active hypothesis is in the simple past = participle
        plural = {pl for _, pl in _SV["nouns"]}
        past = {pp: past for _, past, pp in _SV["transitive_verbs"]}
        for sub in ("ln_passive", "le_passive"):
            for p, h in _rows(frame, sub)[["premise", "hypothesis"]].itertuples(index=False):
                the, subject, be, being, pp, by = _tokens(p)[:6]
                assert (being, by) == ("being", "by") and be == ("are" if subject in plural else "is"), p
                assert _tokens(h)[2] == pp == past[pp], (p, h)
    # le_passive: the by-agent becomes the subject; ln_passive: the patient does
    for p, h in _rows(frame, "le_passive")[["premise", "hypothesis"]].itertuples(index=False):
        assert h.split()[1] == p.rstrip(".").split()[-1]
        assert h.rstrip(".").split()[-1] == p.split()[1]
    for p, h in _rows(frame, "ln_passive")[["premise", "hypothesis"]].itertuples(index=False):
        assert h.split()[1] == p.split()[1] and h.rstrip(".").split()[-1] == p.rstrip(".").split()[-1]


def test_subject_object_swap(frame, style):
    for p, h in _rows(frame, "ln_subject/object_swap")[["premise", "hypothesis"]].itertuples(index=False):
        if style == "original":
            the1, subj, verb, the2, obj = _tokens(p)
            assert _tokens(h) == [the1, obj, verb, the2, subj]
        else:
            the1, subj, be, verb, the2, obj = _tokens(p)
            assert _tokens(h) == [the1, obj, be, verb, the2, subj]
        assert subj != obj


def test_adverb_cases(frame, style):
    v = _vocab(style)
    for p in _rows(frame, "cn_adverb")["premise"]:
        assert p.split()[0].lower() in v["non_entailing_adverbs"], p
    for p in _rows(frame, "ce_adverb")["premise"]:
        assert p.split()[0].lower() in v["entailing_adverbs"], p
    for sub in ("cn_adverb", "ce_adverb"):
        for p, h in _rows(frame, sub)[["premise", "hypothesis"]].itertuples(index=False):
            rest = p.split(" ", 1)[1]
            assert h == rest[0].upper() + rest[1:], (p, h)


def test_subordinator_and_embedding_cases(frame, style):
    v = _vocab(style)
    for sub in ("cn_embedded_under_if", "cn_after_if_clause"):
        assert all(p.split()[0].lower() in v["non_entailing_subordinators"] for p in _rows(frame, sub)["premise"])
    for sub in ("ce_embedded_under_since", "ce_after_since_clause"):
        assert all(p.split()[0].lower() in v["entailing_subordinators"] for p in _rows(frame, sub)["premise"])
    for sub, key in (("cn_embedded_under_verb", "non_entailing_embedding_verbs"),
                     ("ce_embedded_under_verb", "entailing_embedding_verbs")):
        for p in _rows(frame, sub)["premise"]:
            words = p.split()
            assert words[words.index("that") - 1] in _forms(v[key]), p
    for p in _rows(frame, "sn_NP/Z")["premise"]:
        assert "," not in p and p.split()[0].lower() in v["np_z_subordinators"], p


def test_understood_object_pairs(frame, style):
    pairs = set(_vocab(style)["understood_object_verbs"])
    k = 2 if style == "original" else 3  # "the N V the O" / "the N is V a O"
    for p, h in _rows(frame, "se_understood_object")[["premise", "hypothesis"]].itertuples(index=False):
        words = _tokens(p)
        assert len(words) == k + 3 and (words[k], words[k + 2]) in pairs, p
        assert words[k + 1] == ("the" if style == "original" else "a"), p
        assert _tokens(h) == words[:k + 1]


# --------------------------------------------------------------------------- #
# Style "snli" specifics
# --------------------------------------------------------------------------- #

_PROGRESSIVE = re.compile(r"\b(?:is|are) \w+ing\b")


@pytest.mark.parametrize("style", ["snli"], indirect=True)
def test_snli_premises_are_present_progressive(frame, splits, style):
    for df in (frame, *splits):
        for p in df["premise"]:
            assert _PROGRESSIVE.search(p), p
    # and no simple-past auxiliaries of the original style
    assert not frame["premise"].str.contains(r"\b(?:was|were)\b").any()


@pytest.mark.parametrize("style", ["snli"], indirect=True)
def test_snli_hypotheses_agree_and_are_progressive_except_passive_and_np_s(frame, style):
    past = {past for _, past, _ in _SV["transitive_verbs"]}
    for h, sub in frame[["hypothesis", "subcase"]].itertuples(index=False):
        t = _tokens(h)
        i = 1 if t[0] == "the" else 0
        subject, verb = t[i], t[i + 1]
        if sub in ("ln_passive", "le_passive"):
            assert verb in past, h
        else:
            assert _same_number(subject, verb), h
            assert (verb in ("is", "are")) == (sub != "sn_NP/S"), h
            if verb in ("is", "are"):
                assert t[i + 2].endswith("ing"), h


def test_snli_vocabulary_rules():
    v = _SV
    assert all(len(pair) == 2 and pair[0] != pair[1] for pair in v["nouns"])
    assert all(ing.endswith("ing") and past == pp for ing, past, pp in v["transitive_verbs"])
    assert all(p.split()[0].endswith("ing") for p in v["intransitive_verbs"])
    assert all(z.endswith("ing") for z in v["np_z_verbs"])
    # understood-object verbs are not intransitive heads (the hypothesis drops a real object),
    # and their objects take "a"
    assert not {u for u, _ in v["understood_object_verbs"]} & {p.split()[0] for p in v["intransitive_verbs"]}
    assert all(o[0] not in "aeiou" for _, o in v["understood_object_verbs"])
    # present-tense verbs: 3rd singular ends in -s, plural does not
    for key in ("np_s_verbs", "entailing_embedding_verbs", "non_entailing_embedding_verbs"):
        assert all(sg.endswith("s") and not pl.endswith("s") for sg, pl in v[key]), key
    # other people than the original style's (professions)
    assert not _forms(v["nouns"]) & _forms(H.VOCAB["nouns"])
    assert set(v) == set(H.VOCAB)


@pytest.mark.parametrize("style_name", H.STYLES)
def test_identity_pairs(style_name):
    n = 75
    df = H.identity_pairs(n, seed=4, style=style_name)
    assert list(df.columns) == list(H.COLUMNS) and len(df) == n
    assert (df["premise"] == df["hypothesis"]).all() and (df["label"] == H.ENTAILMENT).all()
    assert df["premise"].is_unique
    assert (set(df["heuristic"]), set(df["subcase"])) == ({"identity"}, {"identity"})
    off = OFFSET[style_name] + H.IDENTITY_ID_OFFSET
    assert df["id"].tolist() == list(range(off, off + n))
    # premises are generated premises of that style, round-robin over the 30 subcases
    gen = H.generate(3, seed=4, style=style_name)
    subcase_of = {t.name: t.subcase for t in H.STYLE_TEMPLATES[style_name]}
    assert set(df["premise"]) <= set(gen["premise"])
    assert len({subcase_of[t] for t in df["template"].head(30)}) >= 25
    pd.testing.assert_frame_equal(df, H.identity_pairs(n, seed=4, style=style_name))
    assert H.identity_pairs(0, style=style_name).empty
    # split="train": only premises of the train split, never one of the evaluation split
    tr = H.identity_pairs(40, seed=4, style=style_name, split="train")
    ev = H.load_hans("evaluation", n_per_subcase=30, seed=4, style=style_name)
    assert not set(tr["premise"]) & set(ev["premise"])
    assert (tr["id"] >= OFFSET[style_name] + H.TRAIN_ID_OFFSET + H.IDENTITY_ID_OFFSET).all()
