"""Fault catalogue, fuzzing every text parser (issue 13): trial lists in every format, LFW
pairs.txt, VGGFace2 lists, AgeDB file names, scores.txt, Kaldi data directories, landmark files
(CSV and JSON), TOML config files with --set overrides. Inputs mix the formats' own tokens (so many are nearly
valid) with arbitrary text and bytes; a parser may return a value or raise a MetaembError naming
the problem, nothing else (no IndexError, UnicodeDecodeError, ValueError …).

The default suite runs FAST_EXAMPLES per parser; `-m slow` runs SLOW_EXAMPLES (≥ 10,000) each.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaemb.core.errors import MetaembError

FAST_EXAMPLES = 80
SLOW_EXAMPLES = 10_000
WORK = Path(tempfile.mkdtemp(prefix="metaemb-fuzz-"))
# Hypothesis cannot reset function-scoped fixtures between examples, hence one folder for the
# module; it goes when the test process ends (it used to be left behind in the temp folder).
atexit.register(shutil.rmtree, WORK, ignore_errors=True)


def _find(candidates: list[tuple[str, str]]) -> Callable:
    """The first of (module, function) that exists (parsers move between modules)."""
    for module, name in candidates:
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            fn = None
        if fn is not None:
            return fn
    raise LookupError(f"none of {candidates} exists")


# -- input strategies --------------------------------------------------------------------------
TRIAL_TOKENS = ["0", "1", "2", "-1", "target", "nontarget", "a/1.wav", "b/2.wav", "a/1.wav,b/2.wav",
                "../x.wav", "/abs/x.wav", "C:\\x.wav", ",", "", "10", "300", "3", "#", "Abel",
                "Abel_Pacheco", "0001", "1e9", "99999999999999999999", "é/ü.wav", "x\x00y", "-",
                "n000002/0001_01.jpg", "0.5", "nan", "-inf", "a b"]  # fmt: skip
KALDI_TOKENS = ["u1", "u2", "s1", "s2", "r1", "a.wav", "b.flac", "sox x.wav -t wav - |", "-",
                "0", "0.5", "1.5", "-1", "abc", "nan", "1e999", "s1-u1", "", "é"]  # fmt: skip
LANDMARK_TOKENS = ["path", "x1", "a/1.png", "b/2.jpg", "1", "2.5", "-3", "nan", "inf", "", "1e999",
                   "abc", "\"q\"", "0"]  # fmt: skip
TOML_KEYS = ["train.epochs", "train.lr", "train.batch_size", "model.dim", "model.backbone",
             "data.root", "data.val_fraction", "data.on_bad_sample", "eval.p_targets",
             "eval.scorer", "name", "modality", "features.image_size", "train.seed", "x.y",
             "train", "", "train.epochs.x", "objective.margin", "head.name"]  # fmt: skip
TOML_VALUES = ["1", "-1", "0", "3.5", '"x"', "[]", "[0.01]", "true", "nan", "inf", "{}",
               '"../x"', "1e400", '"0.1"', "[1, 2]", '"softmax"', '"resnet18"', "abc", "",
               "{a = 1}", '"skip"', "0.2", "-0.5"]  # fmt: skip


def lines_of(tokens: list[str], max_fields: int = 6, seps: tuple = (" ", "\t", "  ", ",")):
    line = st.lists(st.sampled_from(tokens), max_size=max_fields).flatmap(
        lambda fields: st.sampled_from(seps).map(lambda sep: sep.join(fields))
    )
    return st.lists(st.one_of(line, st.text(max_size=30)), max_size=12).flatmap(
        lambda ls: st.sampled_from(["\n", "\r\n"]).map(lambda nl: nl.join(ls) + nl)
    )


def file_bytes(text_strategy) -> st.SearchStrategy[bytes]:
    encoded = text_strategy.flatmap(
        lambda t: st.sampled_from(["utf-8", "latin-1", "utf-16"]).map(
            lambda enc: t.encode(enc, errors="replace")
        )
    )
    return st.one_of(encoded, encoded, encoded, st.binary(max_size=200))


def toml_text():
    assignment = st.tuples(st.sampled_from(TOML_KEYS), st.sampled_from(TOML_VALUES)).map(
        lambda kv: f"{kv[0]} = {kv[1]}"
    )
    section = st.sampled_from(["train", "model", "data", "eval", "x", "", "train.sub"]).map(
        lambda s: f"[{s}]"
    )
    line = st.one_of(assignment, assignment, section, st.text(max_size=20))
    return st.lists(line, max_size=8).map(lambda ls: "\n".join(ls) + "\n")


def set_items():
    item = st.tuples(st.sampled_from(TOML_KEYS), st.sampled_from(["=", "", " = "])).flatmap(
        lambda t: st.sampled_from(TOML_VALUES).map(lambda v: f"{t[0]}{t[1]}{v}")
    )
    return st.lists(st.one_of(item, st.text(max_size=15)), max_size=4)


# -- the parsers -----------------------------------------------------------------------------------
def write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def parse_trials(data: bytes, fmt: str) -> None:
    from metaemb.core.eval.trials import read_trials

    read_trials(write("trials.txt", data), root=WORK / "root", format=fmt)


def parse_lfw(data: bytes) -> None:
    path = write("pairs.txt", data)
    try:
        lfw = _find([("metaemb.plugins.vision.protocols", "lfw")])
    except LookupError:
        lfw = None
    if lfw is not None:
        lfw(WORK / "root", path)
    else:
        _find([("metaemb.core.eval.trials", "read_lfw_pairs")])(path, WORK / "root")


def parse_vggface2(data: bytes) -> None:
    read = _find([("metaemb.plugins.vision.protocols", "read_split_list"),
                  ("metaemb.core.eval.trials", "read_vggface2_list")])  # fmt: skip
    read(write("train_list.txt", data))


def parse_agedb_name(name: str) -> None:
    parse = _find([("metaemb.plugins.vision.protocols", "parse_agedb_name"),
                   ("metaemb.core.eval.trials", "parse_agedb_name")])  # fmt: skip
    parse(name)


def agedb_names():
    part = st.sampled_from(["0", "12", "AbbeyLincoln", "Jean_Paul", "_", "m", "f", "M", "99",
                            ".jpg", "/", "\\", "-1", "", "é"])  # fmt: skip
    return st.one_of(st.lists(part, max_size=8).map("".join), st.text(max_size=30))


def parse_scores(data: bytes) -> None:
    from metaemb.core.eval.scores_file import read_scores

    read_scores(write("scores.txt", data))


def parse_kaldi(files: dict[str, bytes]) -> None:
    from metaemb.plugins.audio.kaldi import read_kaldi_dir

    folder = WORK / "kaldi"
    folder.mkdir(exist_ok=True)
    for name in ("wav.scp", "utt2spk", "segments", "spk2utt"):
        (folder / name).unlink(missing_ok=True)
        if name in files:
            (folder / name).write_bytes(files[name])
    read_kaldi_dir(folder)


def parse_landmarks(data: bytes, suffix: str) -> None:
    from metaemb.plugins.vision.landmark_files import read_landmark_file

    read_landmark_file(write("landmarks" + suffix, data))


def parse_config(data: bytes, sets: list[str]) -> None:
    from metaemb.core.config import resolve

    resolve("face", write("config.toml", data), sets)


def landmark_json():
    point = st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=3), st.none())
    value = st.one_of(
        st.lists(point, max_size=11),
        st.lists(st.lists(point, max_size=3), max_size=6),
        point,
        st.dictionaries(st.text(max_size=3), point, max_size=2),
    )
    import json

    doc = st.one_of(st.dictionaries(st.sampled_from(LANDMARK_TOKENS), value, max_size=3), value)
    return doc.map(lambda d: json.dumps(d).encode())


CASES: dict[str, tuple[st.SearchStrategy, Callable]] = {
    "trials-auto": (file_bytes(lines_of(TRIAL_TOKENS)), lambda d: parse_trials(d, "auto")),
    "trials-voxceleb": (file_bytes(lines_of(TRIAL_TOKENS)), lambda d: parse_trials(d, "voxceleb")),
    "trials-kaldi": (file_bytes(lines_of(TRIAL_TOKENS)), lambda d: parse_trials(d, "kaldi")),
    "trials-lfw": (file_bytes(lines_of(TRIAL_TOKENS)), lambda d: parse_trials(d, "lfw")),
    "lfw-pairs": (file_bytes(lines_of(TRIAL_TOKENS, 4, ("\t", " "))), parse_lfw),
    "vggface2-list": (file_bytes(lines_of(TRIAL_TOKENS, 2)), parse_vggface2),
    "scores": (file_bytes(lines_of(TRIAL_TOKENS, 5, ("\t", " "))), parse_scores),
    "agedb-names": (agedb_names(), parse_agedb_name),
    "kaldi-dir": (
        st.dictionaries(
            st.sampled_from(["wav.scp", "utt2spk", "segments", "spk2utt"]),
            file_bytes(lines_of(KALDI_TOKENS, 5, (" ", "\t"))),
        ),
        parse_kaldi,
    ),
    "landmarks-csv": (
        file_bytes(lines_of(LANDMARK_TOKENS, 12, (",",))),
        lambda d: parse_landmarks(d, ".csv"),
    ),
    "landmarks-json": (
        st.one_of(landmark_json(), file_bytes(st.text(max_size=40))),
        lambda d: parse_landmarks(d, ".json"),
    ),
    "config-toml-set": (
        st.tuples(file_bytes(toml_text()), set_items()),
        lambda a: parse_config(*a),
    ),
}


def run_case(name: str, examples: int) -> None:
    strategy, parse = CASES[name]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def check(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # warnings are allowed; only exceptions matter
            with contextlib.suppress(MetaembError):
                parse(data)

    check()


@pytest.mark.parametrize("name", list(CASES))
def test_fuzz_parser(name):
    run_case(name, FAST_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fuzz_parser_long(name):
    run_case(name, SLOW_EXAMPLES)
