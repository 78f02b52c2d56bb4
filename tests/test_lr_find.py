"""`metaemb lr-find`: an exponential LR sweep over real training steps, its plot and suggestion."""

from __future__ import annotations

import json
import math

import helpers
import numpy as np
import pytest

from metaemb.core.train.lr_find import LRFind, lr_find_figure, suggest


def test_lr_find_command_sweeps_and_suggests(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data = helpers.demo_faces(
        tmp_path / "faces", identities=6, images_per_identity=4, image_size=32
    )
    out = tmp_path / "lr.png"
    args = ["lr-find", "--data", data, "--steps", "12", "--start-lr", "1e-4", "--end-lr", "0.1",
            "--out", out, "--set", "train.batch_size=8", "--set", "features.image_size=32",
            "--set", "model.dim=16", "--set", f"data.cache_dir={tmp_path / 'c'}"]  # fmt: skip
    code, text, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out.with_suffix(".json").read_text())
    lrs = np.array(result["lrs"])
    assert len(lrs) == 12 and lrs[0] == pytest.approx(1e-4)
    ratio = (0.1 / 1e-4) ** (1 / 11)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], ratio, rtol=1e-9)  # exponential sweep
    assert len(result["losses"]) == len(lrs) and all(math.isfinite(x) for x in result["losses"])
    assert lrs[0] <= result["suggestion"] <= lrs[-1]
    assert "suggested train.lr" in " ".join(text.split())
    assert out.is_file() and out.stat().st_size > 1000
    assert not (tmp_path / "runs").exists()  # nothing written into a run folder
    for end in ("inf", "1e300"):  # refused up front, not blamed on --steps after the sweep
        i = args.index("--end-lr")
        code, _, err = helpers.run_cli([*args[: i + 1], end, *args[i + 2 :]], capsys)
        assert code == 2 and f"--end-lr {float(end)}" in err and "at most at 100" in err
    # a disk that fills up at the plot keeps the earlier pair: the new numbers beside the old
    # curve were a mixed pair, the earlier numbers lost (H24 F7)
    from metaemb.core.errors import OutputError
    from metaemb.core.eval import figures

    before = (out.read_bytes(), out.with_suffix(".json").read_bytes())

    def disk_full(fig, path):
        raise OutputError(f"cannot write the file '{path}': the disk is full")

    real, figures.save_png = figures.save_png, disk_full
    try:
        i = args.index("--end-lr")
        code, _, err = helpers.run_cli([*args[: i + 1], "0.01", *args[i + 2 :]], capsys)
    finally:
        figures.save_png = real
    assert code == 2 and "disk is full" in err
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before


def test_suggestion_is_the_steepest_descent_and_plot_has_its_lines():
    pytest.importorskip("matplotlib")
    lrs = list(np.logspace(-5, 0, 50))
    # a loss that falls fastest around lr = 1e-3 (a logistic step in log lr)
    smoothed = list(2.0 - 1.0 / (1 + np.exp(-4 * (np.log10(lrs) + 3))))
    s = suggest(lrs, smoothed)
    assert s == pytest.approx(1e-3, rel=0.3)
    fig = lr_find_figure(LRFind(lrs, smoothed, smoothed, s, lrs[-1]))
    [ax] = fig.axes
    assert len(ax.lines) == 3 and ax.get_xscale() == "log"  # raw, smoothed, suggestion
