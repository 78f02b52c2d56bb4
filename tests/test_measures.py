"""Evaluation measures of the face toolkit and trials over a folder the run never saw, end to end:
`trials make --triplets` (+ coverage), `evaluate --measure match|class`, and `evaluate RUN --data
OTHER` without a trial list (all identities of OTHER, said so). Numbers are recomputed by brute
force from the embeddings `metaemb embed` writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch

from metaemb.core.eval.retrieval import Collection
from metaemb.core.eval.scores_file import read_scores
from metaemb.core.eval.triplets import read_triplets


@pytest.fixture(scope="module")
def setup(tiny_face_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    data, run = tiny_face_run
    other = tmp_path_factory.mktemp("measures") / "other"
    for d in sorted(p for p in data.iterdir() if p.is_dir())[:6]:  # six identities, new names
        (other / f"new-{d.name}").mkdir(parents=True)
        for f in sorted(d.iterdir()):
            (other / f"new-{d.name}" / f.name).write_bytes(f.read_bytes())
    return data, other, run


def unit_embeddings(run: Path, data: Path, tmp: Path) -> dict[str, np.ndarray]:
    out = tmp / "emb.pt"
    assert helpers.run_cli(["embed", run, data, "--out", out, "--workers", "0"])[0] == 0
    c = Collection.load(out)
    x = torch.nn.functional.normalize(c.embeddings.double(), dim=1).numpy()
    return dict(zip(c.paths, x, strict=True))


def test_evaluate_other_folder_uses_all_its_identities(setup, tmp_path, capsys):
    _, other, run = setup
    out = tmp_path / "ev"
    args = ["evaluate", run, "--data", other, "--out", out, "--workers", "0"]
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    flat = " ".join(text.split())
    assert "no trial list given" in flat and "all 6 identities" in flat and "not split" in flat
    result = json.loads((out / "metrics.json").read_text())
    assert result["trials"] == "all-identities"
    trials, _ = read_scores(out / "scores.txt")
    ids = {p.split("/")[0] for t in trials for p in (*t.enroll, t.test)}
    assert len(ids) == 6  # a re-split as training data would have kept 2 validation identities
    assert sum(t.label == 1 for t in trials) == 6 * 6  # every same-identity pair: 6 × C(4, 2)
    assert result["training_identities_scored"] == 0 and "trained on" not in flat  # new names


def test_evaluations_of_two_other_folders_keep_both_results(setup, tmp_path, capsys):
    """`evaluate RUN --data A` then `--data B` wrote both to eval-all-identities/, the second
    silently replacing the first; each folder now gets its own default output folder."""
    _, other, run = setup
    second = tmp_path / "second"
    shutil.copytree(other, second)
    for data in (other, second):
        args = ["evaluate", run, "--data", data, "--workers", "0"]
        assert helpers.run_cli(args, capsys)[0] == 0
        args = ["evaluate", run, "--data", data, "--measure", "class", "--workers", "0"]
        assert helpers.run_cli(args, capsys)[0] == 0
    for data in (other, second):
        for name in ("all-identities", "class"):
            written = json.loads((run / f"eval-{data.name}-{name}" / "metrics.json").read_text())
            assert written.get("trials", written.get("measure")) in ("all-identities", "class")
            assert "subtract_mean" in written["scorer_options"]  # spelled out in both (D4 F2)
    assert not (run / "eval-all-identities").exists()
    # Another scorer than the run's own gets its own folder too (comparing scorers).
    args = ["evaluate", run, "--data", other, "--scorer", "euclidean", "--workers", "0"]
    assert helpers.run_cli(args, capsys)[0] == 0
    written = json.loads((run / f"eval-{other.name}-all-identities-euclidean" / "metrics.json")
                         .read_text())  # fmt: skip
    assert written["scorer"] == "euclidean"
    kept = json.loads((run / f"eval-{other.name}-all-identities" / "metrics.json").read_text())
    assert kept["scorer"] != "euclidean"


def test_evaluate_on_a_copy_of_the_training_folder_warns(setup, tmp_path, capsys):
    """A copy of the training folder (the same samples and identities) is the run's folder:
    its held-out validation identities are scored, as for the folder itself (H18 F11: a moved
    folder scored all identities, most of them trained on). A copy that differs is a new
    folder: the identities the run trained on are named and counted, not silently scored as
    strangers."""
    data, _, run = setup
    trained = set(torch.load(run / "last.pt", weights_only=False)["training_identities"])
    identities = {d.name for d in data.iterdir() if d.is_dir()}
    assert len(trained) == 8 and trained < identities  # the 2 validation identities held out
    copy = tmp_path / "copy"
    for d in sorted(identities):
        (copy / d).mkdir(parents=True)
        for f in (data / d).iterdir():
            (copy / d / f.name).write_bytes(f.read_bytes())
    same = tmp_path / "same"
    args = ["evaluate", run, "--data", copy, "--out", same, "--workers", "0"]
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0 and "trained on" not in " ".join(err.split()), err
    got = json.loads((same / "metrics.json").read_text())
    assert got["trials"] == "validation" and got["training_identities_scored"] == 0
    (copy / sorted(identities)[0] / "extra.png").write_bytes(
        next((data / sorted(identities)[0]).iterdir()).read_bytes()
    )  # now another folder
    out = tmp_path / "ev"
    args = ["evaluate", run, "--data", copy, "--out", out, "--workers", "0"]
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    flat = " ".join(err.split())  # warnings on stderr, where batch jobs look for them (H14 F10)
    assert (
        "warning: 8 of the 10 identities scored have the names of identities the run trained on"
        in flat
    )
    assert sorted(trained)[0] in flat
    assert json.loads((out / "metrics.json").read_text())["training_identities_scored"] == 8
    own = tmp_path / "own"  # the training folder itself: its validation identities, no warning
    code, text, err = helpers.run_cli(["evaluate", run, "--out", own, "--workers", "0"], capsys)
    assert code == 0 and "trained on" not in " ".join(text.split())
    assert json.loads((own / "metrics.json").read_text())["training_identities_scored"] == 0


def test_triplets_make_coverage_and_match_accuracy(setup, tmp_path, capsys):
    data, _, run = setup
    tri = tmp_path / "triplets.txt"
    code, text, err = helpers.run_cli(
        ["trials", "make", data, "--out", tri, "--triplets", "50", "--seed", "1"], capsys
    )
    assert code == 0, err
    made = json.loads(text)
    triplets = read_triplets(tri)
    assert len(triplets) == 50 == made["triplets"] and len(set(triplets)) == 50
    assert all(t.anchor.split("/")[0] == t.positive.split("/")[0] != t.negative.split("/")[0]
               and t.anchor != t.positive for t in triplets)  # fmt: skip
    code, text, err = helpers.run_cli(["trials", "coverage", tri], capsys)
    cov = json.loads(text)
    assert cov["triplets"] == 50 and cov["inconsistent"] == 0 and cov["identities"] == 10
    again = tmp_path / "again.txt"
    helpers.run_cli(["trials", "make", data, "--out", again, "--triplets", "50", "--seed", "1"])
    assert again.read_text() == tri.read_text()  # same seed, same list

    out = tmp_path / "match"
    args = ["evaluate", run, "--measure", "match", "--trials", tri, "--data", data, "--out", out,
            "--workers", "0"]  # fmt: skip
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    got = json.loads((out / "metrics.json").read_text())
    e = unit_embeddings(run, data, tmp_path)
    want = np.mean([e[t.anchor] @ e[t.positive] > e[t.anchor] @ e[t.negative] for t in triplets])
    assert got["match_accuracy"] == pytest.approx(want, abs=1e-12)
    assert got["triplets"] == 50 and "match_accuracy" in text
    ids = {p.split("/")[0] for t in triplets for p in (t.anchor, t.positive, t.negative)}
    trained = set(torch.load(run / "last.pt", weights_only=False)["training_identities"])
    assert got["training_identities_scored"] == len(ids & trained) > 0  # triplets of all 10
    assert "have the names of identities the run trained on" in " ".join(err.split())
    # The same list scored as verification pairs says what it is and which measure reads it.
    code, _, err = helpers.run_cli([*args[:2], *args[4:]], capsys)
    assert code == 2 and "This is a triplet list" in err and "--measure match" in err
    # Two triplet lists without --out keep both results (the second replaced the first).
    for listed in (tri, again):
        default = ["evaluate", run, "--measure", "match", "--trials", listed, "--workers", "0"]
        assert helpers.run_cli(default, capsys)[0] == 0
    for listed in (tri, again):
        assert json.loads((run / f"eval-match-{listed.stem}" / "metrics.json").read_text())[
            "source"
        ] == str(listed)


def test_class_accuracy_against_enrolled_identities(setup, tmp_path, capsys):
    _, other, run = setup
    out = tmp_path / "cls"
    args = ["evaluate", run, "--measure", "class", "--data", other, "--enroll-samples", "2",
            "--out", out, "--workers", "0"]  # fmt: skip
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    got = json.loads((out / "metrics.json").read_text())
    assert got["identities"] == 6 and got["probes"] == 6 * 2
    e = unit_embeddings(run, other, tmp_path)
    models = {k: np.mean([e[p] for p in v], 0) for k, v in got["enrolled"].items()}
    names = sorted(models)
    enrolled = {p for v in got["enrolled"].values() for p in v}
    hits = []
    for path, x in e.items():
        if path in enrolled:
            continue
        scores = [x @ models[n] / np.linalg.norm(models[n]) for n in names]
        hits.append(names[int(np.argmax(scores))] == path.split("/")[0])
    assert got["class_accuracy"] == pytest.approx(np.mean(hits), abs=1e-12)
    assert "class_accuracy" in text and got["training_identities_scored"] == 0


def test_identities_too_small_to_probe_are_left_out_and_named(setup, tmp_path, capsys):
    """Identities with too few images left the closed-set gallery without a word (F3 F11):
    those with --enroll-samples images or fewer (nothing left to probe with) are left out, as
    before, and said and counted."""
    import shutil

    _, other, run = setup
    small = tmp_path / "small"
    shutil.copytree(other, small)
    ids = sorted(p for p in small.iterdir() if p.is_dir())
    for d, keep in ((ids[0], 2), (ids[1], 1)):
        for f in sorted(d.iterdir())[keep:]:
            f.unlink()
    out = tmp_path / "cls"
    args = ["evaluate", run, "--measure", "class", "--data", small, "--enroll-samples", "2",
            "--out", out, "--workers", "0"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"2 identities of .* have 2 sample\(s\) or fewer"):
        code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    got = json.loads((out / "metrics.json").read_text())
    assert (got["identities"], got["not_enrolled"]) == (4, 2)
    assert ids[0].name not in got["enrolled"] and ids[1].name not in got["enrolled"]


def test_match_without_triplets_is_a_clear_error(setup, capsys):
    _, _, run = setup
    code, _, err = helpers.run_cli(["evaluate", run, "--measure", "match"], capsys)
    assert code == 2 and "trials make DATA --triplets N" in " ".join(err.split())


def test_triplets_follow_the_vggface2_split(tmp_path, capsys):
    from PIL import Image

    base = tmp_path / "vggface2"
    lists = {"train": range(1, 7), "test": range(7, 11)}
    for split, ids in lists.items():
        listed = [f"n{i:06d}/{j:04d}_01.jpg" for i in ids for j in range(1, 4)]
        for rel in listed:
            (base / split / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(base / split / rel)
        (base / f"{split}_list.txt").write_text("\n".join(listed) + "\n")
    out = tmp_path / "t.txt"
    args = ["trials", "make", base, "--folder", "vggface2", "--folder-set", "split=train",
            "--triplets", "40", "--out", out]  # fmt: skip
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    triplets = read_triplets(out)
    used = {p.split("/")[0] for t in triplets for p in (t.anchor, t.positive, t.negative)}
    assert len(triplets) == 40 and used <= {f"n{i:06d}" for i in lists["train"]}
    assert json.loads(text)["identities"] == len(used)
    args[args.index("split=train")] = "split=nope"
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 2 and "split must be 'train' or 'test'" in err


def test_triplet_lists_with_duplicates_repeated_files_or_wrong_identities_are_warned_about(
    tmp_path,
):
    """A triplet listed 11 times, a positive equal to its anchor or from another identity moved
    the match accuracy silently; pair lists were already checked this way."""
    import warnings

    clean = ["a/1.png a/2.png b/1.png", "b/1.png b/2.png a/1.png"]
    (tmp_path / "ok.txt").write_text("\n".join(clean) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_triplets(tmp_path / "ok.txt")
    bad = [*clean, clean[0], "a/1.png a/1.png b/2.png", "a/1.png b/2.png b/1.png"]
    (tmp_path / "bad.txt").write_text("\n".join(bad) + "\n")
    with pytest.warns(UserWarning) as seen:
        read_triplets(tmp_path / "bad.txt")
    text = str(seen[0].message)
    assert "1 duplicated triplet(s)" in text
    assert "1 triplet(s) naming one file twice (e.g. a/1.png a/1.png b/2.png)" in text
    assert "1 triplet(s) whose positive is not of the anchor's identity" in text


def test_triplet_checks_use_the_folders_identities(tmp_path):
    """An iris folder's identities are eyes (s004/L, s004/R): a negative from the other eye of
    the same person was flagged as 'of the anchor's identity folder' (P14 F6)."""
    import warnings

    from metaemb.core.eval.triplets import read_triplets

    path = tmp_path / "t.txt"
    path.write_text("s004/L/c00.png s004/L/c03.png s004/R/c01.png\n")
    with pytest.warns(UserWarning, match="whose positive is not of the anchor's identity"):
        read_triplets(path)  # by first folder: both eyes look like one identity
    eyes = {p: p.rsplit("/", 1)[0] for p in ("s004/L/c00.png", "s004/L/c03.png", "s004/R/c01.png")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_triplets(path, identity=eyes.__getitem__)) == 1


def test_class_measures_of_two_folders_of_one_name_keep_both_results(setup, tmp_path, capsys):
    """Two corpora whose folders share a name wrote --measure class to one folder, the second
    replacing the first (R3 F6); metrics.json records the data root compared."""
    _, other, run = setup
    twin = tmp_path / "sub" / other.name
    shutil.copytree(other, twin)
    for data in (other, twin):
        args = ["evaluate", run, "--data", data, "--measure", "class", "--workers", "0"]
        assert helpers.run_cli(args, capsys)[0] == 0
    made = list(run.glob(f"eval-{other.name}-class*"))
    roots = {json.loads((m / "metrics.json").read_text())["data_root"] for m in made}
    assert len(made) == 2 and roots == {str(other.resolve()), str(twin.resolve())}


def test_class_measures_with_other_options_keep_each_result(setup, tmp_path, capsys):
    """--enroll-samples 3 replaced the --enroll-samples 1 result in one default folder, without
    a word (H17 F1); --no-adapt and --scorer go beside too, as for verification trials."""
    _, shared, run = setup
    other = tmp_path / "options-data"  # a name no other test evaluates
    shutil.copytree(shared, other)
    base = ["evaluate", run, "--data", other, "--measure", "class", "--workers", "0"]
    for extra in ([], ["--enroll-samples", "2"], ["--no-adapt"]):
        assert helpers.run_cli([*base, *extra], capsys)[0] == 0
    folder = f"eval-{other.name}-class"
    got = {m.name: json.loads((m / "metrics.json").read_text()) for m in run.glob(f"{folder}*")}
    assert set(got) == {folder, f"{folder}-enroll2", f"{folder}-noadapt"}
    assert got[folder]["probes"] != got[f"{folder}-enroll2"]["probes"]


def test_options_a_measure_would_ignore_are_refused(setup, tmp_path, capsys):
    """--measure class ignored --trials and still wrote it into metrics.json as its source
    (H17 F7); --protocol-set without --protocol blamed the measure (H17 F8)."""
    _, other, run = setup
    listed = tmp_path / "list.txt"
    listed.write_text("1 a/1.png a/2.png\n")
    base = ["evaluate", run, "--data", other, "--workers", "0", "--out", tmp_path / "o"]
    code, _, err = helpers.run_cli([*base, "--measure", "class", "--trials", listed], capsys)
    assert code == 2 and "--trials does not apply to --measure class" in " ".join(err.split())
    code, _, err = helpers.run_cli([*base, "--protocol-set", "k=1"], capsys)
    assert code == 2 and "no --protocol was given" in " ".join(err.split())
    assert not (tmp_path / "o").exists()
