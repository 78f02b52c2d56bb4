"""End to end: a GME head trained with gme-bxe through the CLI on a tiny generated face set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import demo_faces, run_cli


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory) -> Path:
    return demo_faces(tmp_path_factory.mktemp("data") / "faces", 16, 6)


def test_gme_bxe_trains_and_evaluates_calibration(tiny_faces, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    sets = [
        "model.head=gme",
        "train.objective=gme-bxe",
        "train.epochs=2",
        "train.batch_size=24",
        "model.dim=32",
        "features.image_size=32",
        "eval.max_targets=300",
        "eval.nontargets=300",
    ]
    args = ["train", "--modality", "face", "--data", str(tiny_faces), "--runs", str(runs)]
    args += ["--workers", "0", *[x for s in sets for x in ("--set", s)]]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err + out
    [run] = list((runs / "face").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("eer", "cllr", "min_cllr", "act_dcf_0.01", "min_dcf_0.01"):
            assert math.isfinite(r[key]), (key, r)
        # Mis-scaled LLRs (the old head's Cllr was 17–3000) would fail this; near-0 LLRs give ~1.
        assert r["cllr"] < 3.0, r
        assert r["min_cllr"] <= r["cllr"] + 1e-9

    # `evaluate` re-scores with the GME scorer and shows calibration next to minDCF.
    code, out, err = run_cli(["evaluate", str(run), "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err + out
    for label in ("minDCF", "actDCF", "Cllr", "minCllr"):
        assert label in out
    metrics = json.loads((run / "eval-validation" / "metrics.json").read_text())
    assert metrics["scorer"] == "gme"
    best = min(records, key=lambda r: r["eer"])
    assert metrics["cllr"] == pytest.approx(best["cllr"], rel=1e-5)

    # The scores are the closed-form LLRs of the model's own meta-embeddings.
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.gme.algebra import llr

    loaded = load_run(run, "cpu", with_data=True)
    lines = [x.split() for x in (run / "eval-validation" / "scores.txt").read_text().splitlines()]
    paths = sorted({p for line in lines[:20] for p in line[:2]})
    folder = loaded.parts.folder
    where = {s.path: i for i, s in enumerate(folder.samples)}
    rel = {p: next(k for k in where if k.endswith(p) or p.endswith(k)) for p in paths}
    g = loaded.embed(folder, [where[rel[p]] for p in paths], workers=0)
    pos = {p: i for i, p in enumerate(paths)}
    for line in lines[:20]:
        want = float(line[3])  # enroll test label score
        got = float(llr(g[pos[line[0]] : pos[line[0]] + 1], g[pos[line[1]] : pos[line[1]] + 1]))
        assert got == pytest.approx(want, abs=1e-4 * max(1.0, abs(want)))
