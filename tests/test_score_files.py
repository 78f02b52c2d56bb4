"""Score files of other toolkits read by `metaemb metrics` (docs/evaluation.md): every line
format the doc names gives the same labelled scores, and a wrong file is named as a score file."""

from __future__ import annotations

import numpy as np
import pytest

from metaemb.core.errors import DataError
from metaemb.core.eval.scores_file import labelled_scores

TAR, NON = [0.9, 0.7, 0.55], [0.1, 0.3, 0.6]
TRIALS = [("a", f"t{i}", 1, s) for i, s in enumerate(TAR)] + [
    ("a", f"n{i}", 0, s) for i, s in enumerate(NON)
]


@pytest.mark.parametrize(
    "line",
    [
        "{e}\t{t}\t{word}\t{s}",  # metaemb's scores.txt
        "{e} {t} {s} {word}",  # WeSpeaker
        "{e} {t} {bit} {s}",  # SpeechBrain's speaker_verification_cosine.py
        "{e} {t} {s} {bit}",
        "{e} {t} {s} {short}",
        "{e} {t} {s} {truth}",
    ],
)
def test_each_labelled_format_gives_the_same_scores(tmp_path, line):
    """The tidy-up that merged two readers dropped SpeechBrain's 'enroll test 1|0 score' and the
    tgt|imp labels (R9 F1)."""
    path = tmp_path / "scores"
    rows = []
    for e, t, label, s in TRIALS:
        word = "target" if label else "nontarget"
        short, truth = ("tgt", "True") if label else ("imp", "False")
        rows.append(line.format(e=e, t=t, s=s, word=word, bit=label, short=short, truth=truth))
    path.write_text("\n".join(rows) + "\n")
    tar, non = labelled_scores(path)
    np.testing.assert_allclose(np.sort(tar), np.sort(TAR))
    np.testing.assert_allclose(np.sort(non), np.sort(NON))


def test_a_missing_or_empty_score_file_is_called_a_score_file(tmp_path):
    """Errors called the score file a 'trial list', ambiguous next to --trials (R9 F2)."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    for path, said in [(empty, "holds no scores"), (tmp_path / "no.txt", "does not exist"),
                       (tmp_path, "is a folder")]:  # fmt: skip
        with pytest.raises(DataError, match="score file") as caught:
            labelled_scores(path)
        assert said in str(caught.value) and "trial list" not in str(caught.value)


def test_repeated_trials_count_once_and_a_contradicting_list_is_refused(tmp_path):
    """Two score files concatenated counted every trial twice, and a --trials list whose labels
    contradicted the lines' own silently won (H22 F3)."""
    one = "".join(f"{e} {t} {s} {'target' if lab else 'nontarget'}\n" for e, t, lab, s in TRIALS)
    twice = tmp_path / "twice"
    twice.write_text(one + one)
    with pytest.warns(UserWarning, match=r"6 lines .* repeat a trial with the same score"):
        tar, non = labelled_scores(twice)
    assert len(tar) == 6 and len(non) == 6  # every line, as evaluate counts them (R10 F2)
    other = tmp_path / "other"
    other.write_text(one.replace(" 0.9 ", " 0.95 "))
    both = tmp_path / "both"
    both.write_text(one + other.read_text())
    with pytest.raises(DataError, match="scored more than once with different scores"):
        labelled_scores(both)
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("".join(f"{e} {t} {'nontarget' if lab else 'target'}\n"
                               for e, t, lab, _ in TRIALS))  # fmt: skip
    with pytest.raises(DataError, match=r"6 of the 6 scored trials .* contradicts"):
        labelled_scores(tmp_path / "other", flipped)


def test_the_metrics_table_shows_only_the_tar_at_far_its_non_targets_reach(tmp_path, capsys):
    """`metaemb metrics` printed TAR at FAR 0.01 %, 0.1 % and 1 % from 100 non-targets, three
    rows of the same TAR at FAR 0 read as measured operating points (R9 F9): its table is
    evaluate's, which shows a rate only where a threshold reaches it."""
    from helpers import run_cli

    rng = np.random.default_rng(0)
    lines = [f"a t{i} {s:.5f} target" for i, s in enumerate(rng.normal(2, 1, 50))]
    lines += [f"a n{i} {s:.5f} nontarget" for i, s in enumerate(rng.normal(0, 1, 150))]
    path = tmp_path / "scores"
    path.write_text("\n".join(lines) + "\n")
    code, text, err = run_cli(["metrics", path, "--out", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert "TAR @ FAR=1%" in text and "FAR=0.1%" not in text and "FAR=0.01%" not in text
    assert (
        "EER" in text and "minDCF (P_tar=0.01)" in text and "50 target and 150 non-target" in text
    )
    import json

    saved = json.loads((tmp_path / "m.json").read_text())
    assert {"tar_at_far_0.0001", "tar_at_far_0.001", "tar_at_far_0.01"} <= set(saved)
    # IJB-B/C's operating points are saved and shown once a list reaches them (F4 F8)
    assert {"tar_at_far_1e-06", "tar_at_far_1e-05"} <= set(saved)
    from metaemb.core.eval.report import tar_at_far_rows

    big = {**saved, "n_nontarget": 2_000_000}
    assert [label for label, _ in tar_at_far_rows(big)][:2] == [
        "TAR @ FAR=0.0001%", "TAR @ FAR=0.001%"]  # fmt: skip


def test_metrics_out_never_replaces_what_it_reads_or_another_file(tmp_path, capsys):
    """`metaemb metrics S --out S` replaced the score file with its own metrics, and `--out`
    over the trial list or an export's sidecar replaced them too (H22 F10)."""
    from helpers import run_cli

    scores = tmp_path / "s.txt"
    scores.write_text("".join(f"{e} {t} {s} {'target' if lab else 'nontarget'}\n"
                              for e, t, lab, s in TRIALS))  # fmt: skip
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{e} {t} {'target' if lab else 'nontarget'}\n"
                              for e, t, lab, _ in TRIALS))  # fmt: skip
    sidecar = tmp_path / "m.onnx.json"
    sidecar.write_text('{"format": "onnx"}')
    kept = {p: p.read_bytes() for p in (scores, listed, sidecar)}
    for out in (scores, listed, sidecar):
        code, _, err = run_cli(["metrics", scores, "--trials", listed, "--out", out], capsys)
        assert code == 2, err
    assert {p: p.read_bytes() for p in kept} == kept
    mine = tmp_path / "m.json"
    for _ in range(2):  # its own earlier result is replaced
        assert run_cli(["metrics", scores, "--out", mine], capsys)[0] == 0


def test_the_label_column_is_decided_once_for_the_file(tmp_path):
    """A SpeechBrain file's line whose score is printed 0 or 1 was read swapped, each line
    deciding alone (R10 F4); a file mixing the two layouts is refused."""
    from metaemb.core.eval.scores_file import read_any_scores

    path = tmp_path / "sb.txt"
    path.write_text("e1 t1 1 0.75\ne1 t2 0 0.20\ne2 t3 0 1\ne2 t4 1 0\n")
    trials, scores = read_any_scores(path)
    assert [(t.label, s) for t, s in zip(trials, scores.tolist(), strict=True)] == [
        (1, 0.75), (0, 0.2), (0, 1.0), (1, 0.0)]  # fmt: skip
    path.write_text("a b 1 0\n")
    assert read_any_scores(path)[1].tolist() == [1.0]  # alone: score 1, label 0
    path.write_text("e1 t1 1 0.75\ne1 t2 0.3 target\n")
    with pytest.raises(DataError, match="line 2 puts the label after the score and line 1"):
        read_any_scores(path)


def test_an_undecided_file_is_read_as_its_list_agrees_and_gaps_are_said(tmp_path):
    """A SpeechBrain file of hard 0/1 decisions reads both ways: without a word it was read as
    'score label', and with --trials refused as scored 'for another list' (H23 F2). A trial
    repeated with the opposite label was called a repeat 'with the same score' (H23 F3), and a
    list with trials the file lacks gave metrics of half of it silently (H23 F4)."""
    sb = tmp_path / "sb.txt"  # enroll test LABEL score, every score a 0 or 1 decision
    rows = [("a", f"t{i}", 1, i % 4 != 0) for i in range(8)] + [
        ("a", f"n{i}", 0, i % 4 == 0) for i in range(8)]  # fmt: skip
    sb.write_text("".join(f"{e} {t} {lab} {int(s)}\n" for e, t, lab, s in rows))
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{e} {t} {'target' if lab else 'nontarget'}\n"
                              for e, t, lab, _ in rows))  # fmt: skip
    with pytest.warns(UserWarning, match="read as label score, the reading its trial list"):
        tar, non = labelled_scores(sb, listed)
    assert len(tar) == 8 and len(non) == 8 and tar.mean() > non.mean()
    with pytest.warns(UserWarning, match=r"reads both as .*give --trials to decide"):
        labelled_scores(sb)
    flip = tmp_path / "flip.txt"
    flip.write_text("a t0 0.9 target\na t1 0.2 nontarget\na t0 0.9 nontarget\n")
    with pytest.warns(UserWarning, match="repeat a trial with the opposite label"):
        labelled_scores(flip)
    half = tmp_path / "half.txt"
    half.write_text("".join(f"{e} {t} {0.9 if lab else 0.1}\n" for e, t, lab, _ in rows[4:12]))
    with pytest.warns(UserWarning, match=r"8 of the 16 labelled trials .* have no score"):
        labelled_scores(half, listed)


def test_a_file_that_is_no_score_file_is_named_as_what_it_is(tmp_path):
    """`metaemb metrics metrics.json` or a checkpoint gave 'line 1 is no score line'; --out a
    folder suggested 'od/out' (H23 F8)."""
    import torch

    from metaemb.core.errors import OutputError
    from metaemb.core.paths import ensure_writable

    (tmp_path / "metrics.json").write_text('{"eer": 0.1}')
    torch.save({"model": {}}, tmp_path / "best.pt")
    with pytest.raises(DataError, match=r"is JSON .*scores\.txt beside it"):
        labelled_scores(tmp_path / "metrics.json")
    with pytest.raises(DataError, match="is a zip archive"):
        labelled_scores(tmp_path / "best.pt")
    with pytest.raises(OutputError, match=r"metrics\.json"):
        ensure_writable(tmp_path, "metrics file")


def test_metrics_calibrates_a_score_file_on_a_development_set(tmp_path, capsys):
    """The field fits a calibration on a development set's scores and applies it to the
    evaluation set's (BOSARIS, Kaldi's logistic-regression-train); metaemb did it only inside
    evaluate, on files of the evaluation's own data (S6 F6)."""
    import json

    from helpers import run_cli

    from metaemb.core.scoring.calibration import LinearCalibration

    rng = np.random.default_rng(1)

    def scores_file(name: str, n: int):
        tar, non = 10 * rng.normal(2, 1, n), 10 * rng.normal(0, 1, 3 * n)  # badly scaled
        lines = [f"a t{i} {s:.6f} target" for i, s in enumerate(tar)]
        lines += [f"a n{i} {s:.6f} nontarget" for i, s in enumerate(non)]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    dev, ev = scores_file("dev.txt", 200), scores_file("eval.txt", 150)
    out = tmp_path / "m.json"
    args = ["metrics", ev, "--calibrate", dev, "--prior", "0.1", "--out", out]
    code, text, err = run_cli(args, capsys)
    assert code == 0, err
    saved = json.loads(out.read_text())
    d = np.loadtxt(dev, usecols=2)
    labels = np.array([line.endswith("target") and not line.endswith("nontarget")
                       for line in dev.read_text().splitlines()])  # fmt: skip
    want = LinearCalibration(prior=0.1).fit(d, labels)
    assert saved["calibration"]["weight"] == pytest.approx(want.weight)
    assert saved["calibration"]["bias"] == pytest.approx(want.bias)
    assert saved["calibrated"]["eer"] == pytest.approx(saved["eer"])  # monotone: same EER
    assert saved["calibrated"]["cllr"] < saved["cllr"]  # the scale was off
    assert "calibration: llr =" in " ".join(text.split())
    code, _, err = run_cli(["metrics", ev, "--prior", "0.1"], capsys)  # no fit to weigh (R13 F7)
    assert code == 2 and "give --calibrate DEV_SCORES too" in " ".join(err.split())
    # an unlabelled development file is told to take --calibrate-trials, not --trials (W3 F3)
    bare = tmp_path / "dev_bare.txt"
    bare.write_text("".join(" ".join(line.split()[:3]) + "\n"
                            for line in dev.read_text().splitlines()))  # fmt: skip
    code, _, err = run_cli(["metrics", ev, "--calibrate", bare], capsys)
    said = " ".join(err.split())
    assert code == 2 and "give --calibrate-trials with the labelled list" in said
