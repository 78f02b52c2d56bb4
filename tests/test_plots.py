"""`metaemb plot` and the training curves `train` draws: non-empty PNGs, and figures holding the
expected number of points and curves (the matplotlib objects are inspected, not just the files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from metaemb.core.eval import plots


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200
        assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something drawn, not blank


@pytest.fixture(scope="module")
def run(tiny_face_run) -> tuple[Path, Path]:
    return tiny_face_run


@pytest.fixture()
def figures(monkeypatch) -> dict[str, object]:
    """Every figure the plots module saves, by file name."""
    saved: dict[str, object] = {}
    original = plots.save_png

    def keep(fig, path):
        saved[Path(path).name] = fig
        return original(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return saved


def test_train_writes_training_curves(run):
    _, run_dir = run
    assert_png(run_dir / "training.png")


def test_plot_command_map_highlight_and_cmc(run, tmp_path, figures, capsys):
    data, run_dir = run
    out = tmp_path / "pics"
    args = ["plot", run_dir, "--embeddings", data, "--highlight", "id0001", "--highlight",
            "id0003", "--method", "pca", "--out", out]  # fmt: skip
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    for name in ("training.png", "embeddings_map.png", "cmc.png"):
        assert_png(out / name)
        assert f"plot: {out / name}" in text
    # training curves: one point per epoch; minDCF at each P_target + Cllr in the third panel
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss_ax, eer_ax, dcf_ax = figures["training.png"].axes
    assert [len(ln.get_xdata()) for ln in loss_ax.lines] == [len(records)] == [2]
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [r["loss"] for r in records])
    np.testing.assert_allclose(eer_ax.lines[0].get_ydata(), [100 * r["eer"] for r in records])
    assert len(dcf_ax.lines) == 2 + 1  # eval.p_targets = [0.01, 0.05], and Cllr
    # the map: the 32 other samples in one scatter, each highlighted identity's 4 in its own
    [ax] = figures["embeddings_map.png"].axes
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes == [32, 4, 4]
    assert "PCA" in ax.get_title() and "40 samples, 10 identities" in ax.get_title()
    # CMC: one curve up to rank 20, non-decreasing accuracies in %, rank 1 = precision@1
    [cax] = figures["cmc.png"].axes
    [line] = cax.lines
    y = np.asarray(line.get_ydata())
    assert len(y) == 20 and np.all(np.diff(y) >= 0) and 0 <= y[0] <= y[-1] <= 100
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 21))


def test_tsne_map_of_a_collection_file(run, tmp_path, figures):
    pytest.importorskip("sklearn")
    data, run_dir = run
    coll = tmp_path / "c.pt"
    assert helpers.run_cli(["embed", run_dir, data, "--out", coll, "--workers", "0"])[0] == 0
    made = plots.plot_run(run_dir, coll, ["id0002"], method="tsne", out=tmp_path / "p")
    assert [p.name for p in made] == ["training.png", "embeddings_map.png", "cmc.png"]
    [ax] = figures["embeddings_map.png"].axes
    assert "TSNE" in ax.get_title()
    assert [len(c.get_offsets()) for c in ax.collections] == [36, 4]


def test_unknown_highlight_is_a_clear_error(run, tmp_path, capsys):
    data, run_dir = run
    args = ["plot", run_dir, "--embeddings", data, "--highlight", "nobody", "--method", "pca",
            "--out", tmp_path / "x"]  # fmt: skip
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 2 and "'nobody' is not among the embedded samples" in err
    assert not (tmp_path / "x" / "training.png").exists()  # it used to be drawn first
    args = ["plot", run_dir, "--embeddings", data, "--method", "umap", "--out", tmp_path / "y"]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 2 and "map method must be one of auto, tsne, pca, got 'umap'" in err
    assert not (tmp_path / "y" / "training.png").exists()


def test_train_without_matplotlib_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    from rich.console import Console

    from metaemb.commands.plot import after_training

    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "loss": 1.0, "eer": 0.3}) + "\n"
    )
    after_training(tmp_path, Console(file=sys.stdout))
    text = capsys.readouterr().out
    assert text.count("no training curves") == 1 and "metaemb[plots]" in text
    assert not (tmp_path / "training.png").exists()


def test_plot_of_a_run_folder_that_does_not_exist_says_so(tmp_path, capsys):
    from helpers import run_cli

    code, _, err = run_cli(["plot", tmp_path / "nosuchrun"], capsys)
    assert code == 2 and "run folder" in err and "does not exist" in err
    assert not (tmp_path / "nosuchrun").exists()  # nothing created for it


def test_verification_plots_of_equal_scores_and_the_hull_the_eer_lies_on(tmp_path):
    """All-equal scores (a collapsed model) gave zero-width histogram bins, numpy and
    matplotlib warnings on the terminal and empty axes; the DET plot marked the hull's EER off
    the staircase it drew (M1 F3, F4): the hull is drawn too, and the mark lies on it."""
    import warnings

    pytest.importorskip("matplotlib")
    from metaemb.core.eval import metrics, report

    tied = np.ones(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.verification_report(tied[:10], tied[10:], [0.01])
        paths = report.verification_plots(tmp_path, tied[:10], tied[10:], result)
    assert all(Image.open(p).size[0] > 100 for p in paths)

    rng = np.random.default_rng(0)
    tar, non = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30)
    result = metrics.verification_report(tar, non, [0.01])
    drawn = lines_drawn(report.det_plot, tmp_path / "det.png", tar, non, result)
    hull = drawn["ROC convex hull"]
    [eer_label] = [k for k in drawn if k.startswith("EER")]
    assert eer_label.endswith("(hull)")
    # the hull is straight between vertices in (P_fa, P_miss) and curved on the probit axes:
    # the EER mark lies on the line as drawn there (joining the vertices missed it by 0.2
    # probit units, R7 F11)
    x, y = hull.get_xdata(), hull.get_ydata()
    order = np.argsort(x, kind="stable")
    at = metrics.probit(result["eer"])
    assert abs(np.interp(at, x[order], y[order]) - at) < 2e-3


def test_the_roc_plot_passes_through_the_reported_tar_at_far(tmp_path):
    """Face researchers read a ROC, TAR against log FAR, where metaemb drew only a DET (F3 F5):
    roc.png's curve reaches each marked TAR@FAR point of the report at that FAR, and a FAR
    below 1/non-targets, which no threshold gives, is not marked."""
    pytest.importorskip("matplotlib")
    from metaemb.core.eval import metrics, report

    rng = np.random.default_rng(1)
    tar, non = rng.normal(2.0, 1.0, 300), rng.normal(0.0, 1.0, 3000)
    result = metrics.verification_report(tar, non, [0.01])
    for far in (1e-4, 1e-3, 1e-2):
        result[f"tar_at_far_{far:g}"] = metrics.tar_at_far(tar, non, far)
    drawn = lines_drawn(report.roc_plot, tmp_path / "roc.png", tar, non, result)
    curve = drawn["every threshold"]
    x, y = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    marks = {k: line for k, line in drawn.items() if k.startswith("TAR ")}
    assert len(marks) == 2 and not any("0.01%" in k for k in marks), list(marks)  # 1e-4 < 1/3000
    for line in marks.values():
        [far], [tar_value] = line.get_xdata(), line.get_ydata()
        assert np.isclose(y[x <= far].max(), tar_value), (far, tar_value)
    assert Image.open(tmp_path / "roc.png").size[0] > 100


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """Every figure metaemb drew switched the process's backend to Agg: a notebook's inline or
    a GUI backend was gone after `Evaluation.run()` (L3 F18)."""
    matplotlib = pytest.importorskip("matplotlib")
    from metaemb.core.eval import metrics, report

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        tar, non = np.linspace(0.5, 2, 20), np.linspace(-1, 1, 30)
        result = metrics.verification_report(tar, non, [0.01])
        paths = report.verification_plots(tmp_path, tar, non, result)
        assert matplotlib.get_backend() == "svg"
        assert all(Image.open(p).size[0] > 100 for p in paths)
    finally:
        matplotlib.use(before)


def lines_drawn(draw, path, *args):
    """{label: line} of the figure `draw(path, *args)` saves, read as it is saved."""
    from metaemb.core.eval import report

    drawn = {}
    real_save = report.save_png

    def keep(fig, out):
        drawn.update({line.get_label(): line for line in fig.axes[0].get_lines()})
        return real_save(fig, out)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "save_png", keep)
        draw(path, *args)
    return drawn
