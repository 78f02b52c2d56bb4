"""Gallery enrollment store and search: file round trip and extension, search against brute-force
scoring (point scorers and GME LLRs/posteriors), open-set decisions, refusal of a foreign model's
gallery, and `metaemb enroll` / `metaemb identify` end to end on a tiny trained face model."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings

import helpers
import pytest
import torch
import torch.nn.functional as F

from metaemb.core.deploy import gallery as gal
from metaemb.core.deploy import gallery_search
from metaemb.core.deploy.gallery import NEW, Gallery
from metaemb.core.deploy.stamp import ModelStamp, model_digest
from metaemb.core.errors import GalleryError
from metaemb.core.gme.algebra import GME, identification_posteriors, llr
from metaemb.core.plugin.components import build

DIM = 8


def point_stamp(digest: str = "0" * 16, dim: int = DIM) -> ModelStamp:
    return ModelStamp(digest=digest, kind="point", dim=dim, config_hash="abcd1234", epoch=2)


def point_gallery(n_ids: int = 5, per_id: int = 3, seed: int = 0) -> Gallery:
    g = torch.Generator().manual_seed(seed)
    gallery = Gallery(point_stamp())
    for i in range(n_ids):
        x = torch.randn(per_id, DIM, generator=g)
        gallery.add(f"id{i}", x, [f"/data/id{i}/{j}.png" for j in range(per_id)])
    return gallery


def gme_world(n_ids: int, per_id: int, dim: int = 16, prec: float = 4.0, seed: int = 0):
    """GMEs from their own generative model: z ~ N(0, I), x = z + noise of precision b, a = b·x."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_ids, dim, generator=g, dtype=torch.float64)

    def sample(i: int, n: int) -> GME:
        b = prec * (0.5 + torch.rand(n, dim, generator=g, dtype=torch.float64))
        x = z[i] + torch.randn(n, dim, generator=g, dtype=torch.float64) / b.sqrt()
        return GME((b * x).float(), b.float())

    return sample


def gme_gallery(n_ids: int = 6, per_id: int = 3, dim: int = 16, seed: int = 0):
    sample = gme_world(n_ids + 1, per_id, dim, seed=seed)
    gallery = Gallery(ModelStamp(digest="1" * 16, kind="gme", dim=dim))
    for i in range(n_ids):
        gallery.add(f"id{i}", sample(i, per_id))
    return gallery, sample


# -- the store ------------------------------------------------------------------------------
def test_round_trip_extend_and_remove(tmp_path):
    gallery = point_gallery()
    path = tmp_path / "g.pt"
    gallery.save(path)
    raw = torch.load(path, weights_only=True)  # plain tensors, strings and numbers only
    assert raw["format"] == "metaemb-gallery" and raw["identities"] == [f"id{i}" for i in range(5)]
    loaded = Gallery.load(path)
    assert loaded.stamp == gallery.stamp
    assert loaded.identities == gallery.identities and loaded.sources == gallery.sources
    assert torch.equal(loaded.samples, gallery.samples)
    assert torch.equal(loaded.owner, gallery.owner)
    assert loaded.counts().tolist() == [3] * 5

    # Pooled model: the mean of L2-normalised samples, against a direct computation.
    centroids, counts = loaded.pooled()
    x = gallery.samples
    for i in range(5):
        want = F.normalize(x[3 * i : 3 * i + 3], dim=1).mean(0)
        assert torch.allclose(centroids[i], want, atol=1e-6)
    assert torch.allclose(raw["pooled"]["embeddings"], centroids) and counts.tolist() == [3] * 5

    # Extending: known sources are skipped, new ones are added to the existing identity.
    extra = torch.randn(2, DIM)
    added = loaded.add(
        "id1", torch.cat([x[3:4], extra[:1]]), ["/data/id1/0.png", "/data/id1/9.png"]
    )
    assert added == 1 and loaded.counts().tolist() == [3, 4, 3, 3, 3]
    assert loaded.add("id9", extra, ["/data/id9/0.png", "/data/id9/0.png"]) == 1  # duplicate
    with pytest.raises(GalleryError, match="already enrolled as 'id2'"):
        loaded.add("id3", x[6:7], ["/data/id2/0.png"])
    loaded.save(path)
    again = Gallery.load(path)
    assert again.identities == [*gallery.identities, "id9"] and again.counts()[1] == 4
    assert torch.equal(again.samples[again.owner == 1][-1], extra[0])

    # Removing an identity re-indexes the owners of the others.
    assert again.remove("id1") == 4
    assert again.identities == ["id0", "id2", "id3", "id4", "id9"]
    assert torch.equal(again.samples[again.owner == 1], x[6:9])
    assert again.add("id1", x[3:4], ["/data/id1/0.png"]) == 1  # its sources are free again
    with pytest.raises(GalleryError, match="did you mean 'id2'"):
        again.remove("id22")


def test_an_identity_is_renamed_or_merged_without_its_files(tmp_path, capsys):
    """A service renames identities more often than it re-embeds, and the enrolled files may be
    gone: there was no way but unenroll and enroll again (E1 F7)."""
    gallery = point_gallery()
    x = gallery.samples
    path = tmp_path / "g.pt"
    gallery.save(path)
    code, out, err = run_cli(["rename-identity", "--gallery", path, "id1", "alice"], capsys)
    assert code == 0 and "renamed 'id1' to 'alice' (3 samples)" in out, err
    g = Gallery.load(path)
    assert g.identities == ["id0", "alice", "id2", "id3", "id4"]
    assert g.enrolled_as("/data/id1/0.png") == "alice"
    code, _, err = run_cli(["rename-identity", "--gallery", path, "alice", "id3"], capsys)
    assert code == 2 and "'id3' is already enrolled (3 samples): pass --merge" in err
    assert Gallery.load(path).identities == g.identities  # nothing changed
    code, out, err = run_cli(["rename-identity", "--gallery", path, "alice", "id3", "--merge"],
                             capsys)  # fmt: skip
    assert code == 0 and "merged 'alice' into 'id3' (6 samples); 4 identities" in out, err
    merged = Gallery.load(path)
    assert merged.identities == ["id0", "id2", "id3", "id4"]
    assert merged.counts().tolist() == [3, 3, 6, 3]
    centroids, _ = merged.pooled()  # the pooled model of both identities' samples
    want = F.normalize(torch.cat([x[3:6], x[9:12]]), dim=1).mean(0)
    assert torch.allclose(centroids[2], want, atol=1e-6)
    for bad, said in (("ghost", "identity 'ghost' is not enrolled"),):
        code, _, err = run_cli(["rename-identity", "--gallery", path, bad, "x"], capsys)
        assert code == 2 and said in err
    code, _, err = run_cli(["rename-identity", "--gallery", path, "id0", "a\tb"], capsys)
    assert code == 2 and "without tabs or line breaks" in err
    code, _, err = run_cli(["rename-identity", "--gallery", path, "id0", "<new>"], capsys)
    assert code == 2 and "cannot name one" in err
    code, _, err = run_cli(["rename-identity", "--gallery", path, "id0", " id0 "], capsys)
    assert code == 2 and "starts or ends with a blank" in err  # --identities trims (H20 F2)


def test_gme_gallery_pools_natural_parameters(tmp_path):
    gallery, _ = gme_gallery()
    pooled, counts = gallery.pooled()
    s = gallery.samples
    assert torch.allclose(pooled.a[2], s.a[6:9].sum(0)) and torch.allclose(
        pooled.b[2], s.b[6:9].sum(0)
    )
    gallery.save(tmp_path / "g.pt")
    loaded = Gallery.load(tmp_path / "g.pt")
    assert loaded.stamp.kind == "gme" and torch.equal(loaded.samples.b, s.b)
    assert counts.tolist() == [3] * 6


def test_bad_input_and_files(tmp_path):
    gallery = point_gallery()
    with pytest.raises(GalleryError, match="point embeddings of dimension 8"):
        gallery.add("x", torch.randn(2, DIM + 1))
    with pytest.raises(GalleryError, match="NaN"):
        gallery.add("x", torch.full((1, DIM), math.nan))
    with pytest.raises(GalleryError, match="without tabs or line breaks, got 'a\\\\tb'"):
        gallery.add("a\tb", torch.randn(1, DIM))
    with pytest.raises(GalleryError, match="'<new>' is the answer identify gives"):
        gallery.add("<new>", torch.randn(1, DIM))  # would read as a rejection in the metrics
    with pytest.raises(GalleryError, match="does not exist; create it with `metaemb enroll"):
        Gallery.load(tmp_path / "missing.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(GalleryError, match="not a metaemb gallery"):
        Gallery.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(GalleryError, match="cannot be read"):
        Gallery.load(tmp_path / "junk.pt")
    # an export mistaken for the gallery (both .pt) was called damaged, with torch's advice to
    # load it with weights_only=False (E1 F9)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "best.torchscript.pt")
    (tmp_path / "best.onnx").write_bytes(b"\x08\x07")
    for name, kind in (("best.torchscript.pt", "TorchScript"), ("best.onnx", "ONNX")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's own warning does not reach the user
            with pytest.raises(GalleryError, match=rf"is a {kind} export .*not a gallery"):
                Gallery.load(tmp_path / name)
    with pytest.raises(GalleryError, match="empty"):
        Gallery(point_stamp()).search(torch.randn(1, DIM))


def test_foreign_model_is_refused(tmp_path):
    model = torch.nn.Linear(4, 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    digest = model_digest(state)
    assert digest == model_digest({k: v.clone() for k, v in state.items()})
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    other = model_digest(model.state_dict())
    assert other != digest

    stamp = ModelStamp.of(
        {"model": state, "config_hash": "cafe0123", "epoch": 3}, torch.zeros(1, 3)
    )
    assert (stamp.kind, stamp.dim, stamp.digest) == ("point", 3, digest)
    g = Gallery(stamp)
    g.add("a", torch.randn(2, 3))
    g.save(tmp_path / "g.pt")
    gal.open_gallery(tmp_path / "g.pt", digest)  # the same weights: fine
    with pytest.raises(GalleryError, match=r"another model \(model .*config cafe0123, epoch 3"):
        gal.open_gallery(tmp_path / "g.pt", other)
    assert gal.open_gallery(tmp_path / "none.pt", other) is None
    with pytest.raises(
        GalleryError, match="gme embeddings of dimension 3, but the gallery holds point"
    ):
        g.search(GME(torch.zeros(1, 3), torch.ones(1, 3)))


# -- search ---------------------------------------------------------------------------------
def brute_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(scores, dim=1, descending=True)[:, :k]
    return scores.gather(1, order), order


@pytest.mark.parametrize("scorer", ["cosine", "euclidean"])
def test_point_search_equals_brute_force(monkeypatch, scorer):
    monkeypatch.setattr(gallery_search, "PROBE_CHUNK", 7)  # many blocks on both axes
    monkeypatch.setattr(gallery_search, "IDENT_CHUNK", 5)
    gallery = point_gallery(n_ids=23, per_id=2, seed=1)
    probes = torch.randn(31, DIM, generator=torch.Generator().manual_seed(2))
    x, owner = gallery.samples, gallery.owner
    if scorer == "cosine":
        means = torch.stack([F.normalize(x[owner == i], dim=1).mean(0) for i in range(23)])
        want = F.normalize(probes, dim=1) @ F.normalize(means, dim=1).T
    else:
        means = torch.stack([x[owner == i].mean(0) for i in range(23)])
        want = -torch.cdist(probes.double(), means.double())
    got = gallery.score_matrix(probes, scorer)
    assert torch.allclose(got, want.double(), atol=1e-5)
    res = gallery.search(probes, k=4, scorer=build("scorers", scorer, {}))
    v, i = brute_topk(want.double(), 4)
    assert torch.equal(res.index, i) and torch.allclose(res.scores, v, atol=1e-5)
    assert res.kind == "score" and res.threshold is None and bool(res.accepted.all())
    assert gallery.search(probes, k=100).index.shape == (31, 23)  # k capped at the gallery size


def test_gme_search_llrs_and_posteriors_equal_brute_force(monkeypatch):
    monkeypatch.setattr(gallery_search, "PROBE_CHUNK", 4)
    monkeypatch.setattr(gallery_search, "IDENT_CHUNK", 3)
    gallery, sample = gme_gallery(n_ids=7)
    probes = GME.cat([sample(i % 8, 1) for i in range(10)])
    pooled, _ = gallery.pooled()
    want = torch.stack([llr(probes[p], pooled) for p in range(10)]).double()
    assert torch.allclose(gallery.score_matrix(probes), want, atol=1e-4)
    p_new = 0.3
    res = gallery.search(probes, k=3, p_new=p_new)
    v, i = brute_topk(want, 3)
    assert torch.equal(res.index, i) and torch.allclose(res.scores, v, atol=1e-4)
    prior = [(1 - p_new) / 7] * 7 + [p_new]
    post = identification_posteriors(probes.to(torch.float64), pooled.to(torch.float64), prior)
    assert torch.allclose(res.posteriors, post.gather(1, i), atol=1e-5)
    assert torch.allclose(res.p_new, post[:, -1], atol=1e-5)
    # Bayes decision = the MAP hypothesis among the 7 enrolled identities and "new".
    assert res.threshold == pytest.approx(math.log(p_new * 7 / (1 - p_new)))
    map_choice = post.argmax(1)
    expect = [NEW if int(c) == 7 else f"id{int(c)}" for c in map_choice]
    assert res.decisions() == expect


def test_open_set_unknown_probe_is_new():
    gallery, sample = gme_gallery(n_ids=6, per_id=3)
    known = GME.cat([sample(i, 1) for i in range(6)])
    unknown = sample(6, 4)  # identity 6 was never enrolled
    res = gallery.search(GME.cat([known, unknown]), k=2)
    assert res.decisions() == [f"id{i}" for i in range(6)] + [NEW] * 4
    assert bool((res.p_new[6:] > 0.5).all()) and bool((res.p_new[:6] < 0.5).all())
    # A fixed LLR threshold overrides the Bayes one.
    assert (
        res.threshold == 0.0 and str(res.threshold) == "0.0"
    )  # uniform prior over 6 + new (printed as 0, not -2.2e-16)
    strict = gallery.search(known, k=1, threshold=1e9)
    assert strict.decisions() == [NEW] * 6

    # Point galleries: closed set by default, open set with a score threshold.
    g = torch.Generator().manual_seed(5)
    centres = 3 * torch.eye(DIM)[:3]
    pg = Gallery(point_stamp())
    for i in range(3):
        pg.add(f"id{i}", centres[i] + 0.3 * torch.randn(2, DIM, generator=g))
    probes = torch.cat([centres + 0.3 * torch.randn(3, DIM, generator=g), 3 * torch.eye(DIM)[7:]])
    closed = pg.search(probes, k=1).decisions()
    assert closed[:3] == ["id0", "id1", "id2"] and closed[3] != NEW
    res = pg.search(probes, k=1, threshold=0.5)
    assert res.decisions() == ["id0", "id1", "id2", NEW]


def test_faiss_backend_matches_brute_force():
    pytest.importorskip("faiss")
    gallery = point_gallery(n_ids=40, per_id=3, seed=3)
    probes = torch.randn(25, DIM, generator=torch.Generator().manual_seed(4))
    exact = gallery.search(probes, k=5)
    fast = gallery.search(probes, k=5, backend="faiss", threshold=0.2)
    assert torch.equal(fast.index, exact.index)
    assert torch.allclose(fast.scores, exact.scores, atol=1e-5)
    assert torch.equal(fast.accepted, exact.scores[:, 0] >= 0.2)


def test_faiss_backend_refuses_other_scorers():
    gallery = point_gallery()
    with pytest.raises(GalleryError, match=r"the .cosine. scorer only"):
        gallery.search(torch.randn(2, DIM), backend="faiss", scorer="euclidean")


# -- the commands, end to end -----------------------------------------------------------------
def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """`helpers.run_cli` with stderr's whitespace (rich's line wrapping) collapsed."""
    code, out, err = helpers.run_cli(args, capsys)
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tiny face data, enroll folder: 3 identities × 3 images, probe folder: their other 2
    images + 2 of an identity never enrolled, a run trained 1 epoch)."""
    import sys

    from metaemb import cli

    base = tmp_path_factory.mktemp("gallery")
    faces = base / "faces"
    build(
        "demo_data",
        "face",
        {"identities": 6, "images_per_identity": 5, "image_size": 32},
        out=faces,
    )
    enroll, probes = base / "enroll", base / "probes"
    for name, ids, images in ((enroll, 3, range(3)), (probes, 3, range(3, 5))):
        for i in range(ids):
            for j in images:
                (name / f"id000{i}").mkdir(parents=True, exist_ok=True)
                shutil.copy(faces / f"id000{i}/00{j}.png", name / f"id000{i}/00{j}.png")
        shutil.copy(faces / "landmarks.csv", name / "landmarks.csv")
    (probes / "id0005").mkdir()
    for j in range(2):
        shutil.copy(faces / f"id0004/00{j}.png", probes / f"id0005/00{j}.png")
    runs = base / "runs"
    args = ["train", "--modality", "face", "--data", faces, "--runs", runs, "--workers", "0"]
    # Aligned with the landmark table each folder holds (identify looks for it under the root).
    for s in ("train.epochs=1", "train.batch_size=16", "model.dim=16", "model.frontend=align",
              "eval.max_targets=30", "eval.nontargets=30", "features.image_size=32", f"data.cache_dir={base / 'cache'}"):  # fmt: skip
        args += ["--set", s]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["metaemb", *map(str, args)])
        try:
            cli.main()
        except SystemExit as exc:
            assert not exc.code, "tiny training failed"
    [run] = list((runs / "face").iterdir())
    return enroll, probes, run


def test_enroll_and_identify_commands(trained, tmp_path, capsys):
    from metaemb.core.deploy.loading import load_run

    enroll, probes, run = trained
    path = tmp_path / "gallery.pt"
    args = ["enroll", run, "--gallery", path, "--data", enroll, "--workers", "0"]
    code, out, err = run_cli([*args, "--identities", "id0000,id0001"], capsys)
    assert code == 0, err
    assert "6 new samples for 2 identities" in out
    assert Gallery.load(path).identities == ["id0000", "id0001"]
    code, out, err = run_cli([*args, "--show", "1"], capsys)  # extends: id0002's are new
    assert code == 0, err
    assert "3 new samples for 3 identities (1 with new samples)" in out
    # at most --show rows, the identities with new samples first (800 rows of 0 before, H15)
    assert "id0002" in out and "id0000" not in out and "… 2 more identities" in out
    g = Gallery.load(path)
    assert g.identities == ["id0000", "id0001", "id0002"] and g.counts().tolist() == [3, 3, 3]
    assert g.sources[0] == str((enroll / "id0000/000.png").resolve())
    code, _, err = run_cli([*args, "--identities", "id0000,nobody"], capsys)
    assert code == 2 and "identity 'nobody' has no folder" in err

    # Brute force: probes embedded directly, scored against unit means of the enrolled samples.
    lp = load_run(run, "cpu", data=probes)
    xp = lp.embed(lp.parts.folder, None, 0)
    truth = [s.identity for s in lp.parts.folder.samples]
    means = torch.stack([F.normalize(g.samples[g.owner == i], dim=1).mean(0) for i in range(3)])
    want = (F.normalize(xp, dim=1) @ F.normalize(means, dim=1).T).double()
    threshold = want[-2:].max().item() + 1e-4  # every unknown probe falls below it
    res_path = tmp_path / "results.tsv"
    code, out, err = run_cli(
        ["identify", run, "--gallery", path, "--data", probes, "--top-k", "2", "--out", res_path,
         "--threshold", threshold, "--workers", "0"], capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = [r.split("\t") for r in res_path.read_text().splitlines()[1:]]
    assert len(rows) == 8 * 2
    for p in range(8):
        order = torch.argsort(want[p], descending=True)
        for r in range(2):
            probe, ident, rank, cand, score, post, decision = rows[2 * p + r]
            assert (probe.split("/")[0], ident, rank) == (truth[p], truth[p], str(r + 1))
            assert cand == f"id000{int(order[r])}" and post == ""
            assert float(score) == pytest.approx(float(want[p, order[r]]), abs=1e-4)
            accept = float(want[p, order[0]]) >= threshold
            assert decision == (f"id000{int(order[0])}" if accept else NEW)
    assert [rows[2 * p][6] for p in (6, 7)] == [NEW, NEW]

    def printed(metric: str) -> str:
        return re.search(rf"(?<!\w){metric}\s*\S\s*([\d.]+%?)", out).group(1)

    top1 = [f"id000{int(i)}" for i in want.argmax(1)]
    rank1 = sum(t == truth[p] for p, t in enumerate(top1[:6])) / 6
    assert printed("rank_1") == f"{rank1:.2%}"
    assert "rank_5" not in out  # 3 enrolled identities: every mate is in the top 5 (F4 F2)
    assert (printed("mated"), printed("non_mated")) == ("6", "2")
    assert printed("false_positive_identification_rate") == "0.00%"
    # FPIR ≤ 0.1 of 2 non-mated probes allows no false alarm: above the best non-mated score,
    # which is the threshold reported, and said to be the TPIR at FPIR 0 (F4 F2).
    mate = torch.tensor([int(t[-1]) for t in truth[:6]])
    hits = [top1[p] == truth[p] and want[p, mate[p]] > want[6:].max() for p in range(6)]
    assert printed("tpir_at_fpir_0.1") == f"{sum(hits) / 6:.2%}"
    cut = re.search(r"threshold_at_fpir_0\.1\s*\S\s*(-?[\d.e-]+)", out).group(1)
    assert float(cut) == pytest.approx(want[6:].max().item(), abs=1e-3)
    flat = " ".join(out.split())
    assert "note: tpir_at_fpir_0.1 is the TPIR at FPIR 0: 2 non-mated probe(s)" in flat
    # given back as --threshold (accepting scores at or above it), it gives that FPIR: no
    # unenrolled probe passes, where the best one's own score let it through (R12 F1)
    args = ["identify", run, "--gallery", path, "--data", probes, "--top-k", "1", "--threshold",
            cut, "--workers", "0", "--show", "0"]  # fmt: skip
    code, again, err = run_cli(args, capsys)
    assert code == 0, err
    assert re.search(r"false_positive_identification_rate\s*\S\s*0\.00%", again)

    # Loose probe files (no labels, no metrics): the same scores.
    args = [
        "identify",
        run,
        "--gallery",
        path,
        "--probe",
        probes / "id0005/001.png",
        "--top-k",
        "1",
    ]
    code, out, err = run_cli([*args, "--out", res_path, "--workers", "0"], capsys)
    assert code == 0, err
    assert "rank_1" not in out
    [row] = [r.split("\t") for r in res_path.read_text().splitlines()[1:]]
    assert row[1] == "" and float(row[4]) == pytest.approx(float(want[7].max()), abs=1e-4)

    # Probes from two roots: the landmark table is looked for under their common folder, which
    # the error names, with the option that sets the root.
    other = tmp_path / "elsewhere" / "id0001"
    other.mkdir(parents=True)
    shutil.copy(probes / "id0001/003.png", other / "003.png")
    code, _, err = run_cli([*args, "--probe", other / "003.png", "--workers", "0"], capsys)
    assert code == 2 and "landmarks.csv" in err, err
    assert "The data root was taken as" in err and "--data ROOT sets it" in err
    assert "a landmark file covering these images" in err and "--on-bad-sample" not in err
    # A probe outside --data: the advice was to pass --data, which the user had (Q1 F30).
    code, _, err = run_cli([*args, "--data", probes, "--probe", other / "003.png", "--workers",
                            "0"], capsys)  # fmt: skip
    said = " ".join(err.split())
    assert code == 2 and f"is not under --data '{probes}'" in said and "leave --data out" in said
    # a probe symlinked inside --data is a sample of its folder, as the scan lists it (H18 F13)
    (probes / "id0001" / "linked.png").symlink_to(other / "003.png")
    code, _, err = run_cli([*args, "--data", probes, "--probe", probes / "id0001" / "linked.png",
                            "--frontend-set", "on_no_face=center", "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    (probes / "id0001" / "linked.png").unlink()

    # Probing with the enrolled samples themselves: said (each scores against itself).
    with pytest.warns(UserWarning, match=r"9 of the 9 probes are samples enrolled in the gallery"):
        code, out, err = run_cli(["identify", run, "--gallery", path, "--data", enroll,
                                  "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err

    # Clear errors: missing gallery, another model's gallery, an empty probe folder.
    code, _, err = run_cli(
        ["identify", run, "--gallery", tmp_path / "no.pt", "--data", probes], capsys
    )
    assert code == 2 and "does not exist; create it with `metaemb enroll" in err
    foreign = tmp_path / "foreign.pt"
    other = Gallery(ModelStamp(digest="f" * 16, kind="point", dim=16, config_hash="0badc0de"))
    other.add("x", torch.randn(2, 16))
    other.save(foreign)
    args = ["identify", run, "--gallery", foreign, "--data", probes, "--workers", "0"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "enrolled with another model" in err and "0badc0de" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        ["identify", run, "--gallery", path, "--data", tmp_path / "empty"], capsys
    )
    assert code == 2 and "no identity sub-folders" in err


def test_faiss_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss → ImportError
    with pytest.raises(GalleryError, match="pip install faiss-cpu"):
        point_gallery().search(torch.randn(2, DIM), backend="faiss")


def test_gme_results_file_and_table(tmp_path):
    from rich.console import Console

    from metaemb.commands.gallery import print_results
    from metaemb.core.deploy.search import Identification, write_results

    gallery, sample = gme_gallery(n_ids=4)
    probes = GME.cat([sample(0, 1), sample(4, 1)])  # one enrolled identity, one unknown
    res = gallery.search(probes, k=2)
    ident = Identification(["p0.png", "p1.png"], ["id0", "id4"], res, {"rank_1": 1.0})
    write_results(tmp_path / "r.tsv", ident)
    rows = [r.split("\t") for r in (tmp_path / "r.tsv").read_text().splitlines()]
    assert rows[0] == ["probe", "identity", "rank", "candidate", "score", "posterior", "decision"]
    assert [r[6] for r in rows[1:]] == ["id0", "id0", NEW, NEW]
    for p in range(2):
        for r in range(2):
            row = rows[1 + 2 * p + r]
            assert row[3] == res.names(p)[r]
            assert float(row[4]) == pytest.approx(float(res.scores[p, r]), rel=1e-5)
            assert float(row[5]) == pytest.approx(float(res.posteriors[p, r]), rel=1e-5)
    console = Console(record=True, width=200)
    print_results(console, ident, show=1)
    text = console.export_text()
    assert "P(new)" in text and "1 more probes" in text and "LLR ≥ 0" in text
    assert f"{float(res.p_new[0]):.1%}" in text and "rank_1" in text


def test_identity_folders_with_tabs_or_line_breaks_are_named_at_once(trained, tmp_path, capsys):
    """enroll refused the first such folder only, after embedding, as "single-line text" (a tab
    is single-line) without naming the data folder (H19 F1): every one is named, up front."""
    enroll, _, run = trained
    data = tmp_path / "data"
    for name, src in (("tab\there", "id0000"), ("a\nb", "id0001"), ("ok", "id0002")):
        shutil.copytree(enroll / src, data / name)
    path = tmp_path / "g.pt"
    code, _, err = run_cli(["enroll", run, "--gallery", path, "--data", data, "--workers", "0"],
                           capsys)  # fmt: skip
    said = " ".join(err.split())
    assert code == 2 and "2 identity folder(s) of" in said and str(data) in said, said
    assert "'a\\nb'" in said and "'tab\\there'" in said and "--identities" in said, said
    assert not path.exists()
    args = ["enroll", run, "--gallery", path, "--data", data, "--workers", "0"]
    shutil.copy(enroll / "landmarks.csv", data / "landmarks.csv")  # the old folder names
    code, _, err = run_cli([*args, "--identities", "ok", "--frontend-set", "on_no_face=center"],
                           capsys)  # fmt: skip
    assert code == 0, err


def test_a_gallery_and_its_folder_moved_elsewhere_are_not_enrolled_twice(trained, tmp_path, capsys):
    """The nightly `enroll` after the folder moved (another machine, another mount) enrolled
    every sample a second time without a word, doubling a GME identity's evidence (E1 F6); the
    same files (identity, path, embedding) are now followed, and a new file is still added."""
    from metaemb.core.deploy.gallery import Gallery

    enroll, probes, run = trained
    a, b, path = tmp_path / "A", tmp_path / "B", tmp_path / "g.pt"
    shutil.copytree(enroll, a)
    args = ["enroll", run, "--gallery", path, "--workers", "0", "--data"]
    assert run_cli([*args, a], capsys)[0] == 0
    before = Gallery.load(path)
    a.rename(b)
    with pytest.warns(UserWarning, match=r"9 enrolled sample\(s\) were found moved to"):
        code, _, err = run_cli([*args, b], capsys)
    assert code == 0, err
    after = Gallery.load(path)
    assert after.counts().tolist() == before.counts().tolist() == [3, 3, 3]
    assert all(s.startswith(str(b.resolve())) for s in after.sources)
    torch.testing.assert_close(after.data["embeddings"], before.data["embeddings"])
    # another picture under an enrolled file's name, in a folder moved again, is not that file
    c = tmp_path / "C"
    b.rename(c)
    shutil.copy(probes / "id0000" / "003.png", c / "id0000" / "000.png")
    with pytest.warns(UserWarning, match=r"8 enrolled sample\(s\) were found moved"):
        code, _, err = run_cli([*args, c], capsys)
    assert code == 0, err
    assert Gallery.load(path).counts().tolist() == [4, 3, 3]
    # a copy (the enrolled folder still there) is enrolled again, but said (R6 F6)
    shutil.copytree(c, tmp_path / "D")
    with pytest.warns(UserWarning, match=r"9 sample\(s\) of .* look like files already enrolled"):
        code, _, err = run_cli([*args, tmp_path / "D"], capsys)
    assert code == 0, err
    # a file whose name holds '#' is there, not a missing segment of 'cam' (R6 F10)
    from metaemb.core.deploy.enrollment import source_exists

    (tmp_path / "cam#1.png").write_bytes(b"x")
    assert source_exists(str(tmp_path / "cam#1.png"))
    assert source_exists(str(tmp_path / "cam#1.png") + "#0-100")  # a segment of it
    assert not source_exists(str(tmp_path / "gone#1.png"))
    # a folder named with '#' is no segment: a gone file under it is gone (R8 F2)
    (tmp_path / "Team").mkdir()
    assert not source_exists(str(tmp_path / "Team#2" / "id0000" / "000.png"))
    team = tmp_path / "Team#2"
    shutil.copytree(tmp_path / "D", team)
    path2 = tmp_path / "g2.pt"
    assert run_cli(["enroll", run, "--gallery", path2, "--workers", "0", "--data", team],
                   capsys)[0] == 0  # fmt: skip
    team.rename(tmp_path / "Team#3")
    with pytest.warns(UserWarning, match=r"enrolled sample\(s\) were found moved"):
        code, _, err = run_cli(["enroll", run, "--gallery", path2, "--workers", "0", "--data",
                                tmp_path / "Team#3"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(Gallery.load(path2).samples) == 9  # followed, not enrolled twice


def test_after_a_rename_the_enroll_job_says_to_rename_the_folder_which_then_follows(
    trained, tmp_path, capsys
):
    """After rename-identity, re-running enroll on the unchanged folder refused every file and
    advised removing the renamed identity (E1 F10); renaming the folder as well then enrolled
    its files a second time (R6 F11, D4 F1). The refusal says to rename the folder, and the
    renamed folder's files are recognised as the enrolled ones."""
    from metaemb.core.deploy.gallery import Gallery

    enroll, _, run = trained
    data, path = tmp_path / "B", tmp_path / "g.pt"
    shutil.copytree(enroll, data)
    args = ["enroll", run, "--gallery", path, "--workers", "0", "--data", data]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(["rename-identity", "--gallery", path, "id0001", "robert"], capsys)[0] == 0
    # Probes still in a folder with the old name count as non-mated: said, naming both names,
    # which the gallery's records show (D4 F3).
    _, probes, _ = trained
    with pytest.warns(UserWarning, match=r"2 probes are in folders named as no enrolled ") as said:
        code, _, err = run_cli(["identify", run, "--gallery", path, "--data", probes,
                                  "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    [w] = [str(w.message) for w in said if "rename-identity renames" in str(w.message)]
    assert "'id0001' (enrolled as 'robert')" in w and "\"'" not in w
    # an impostor whose folder is named as a folder above the identity folders ('B', the data
    # root here) is no renamed identity: not called one (R8 F5)
    odd = tmp_path / "probes2"
    shutil.copytree(probes, odd)
    (odd / "id0005").rename(odd / "B")
    table = odd / "landmarks.csv"
    table.write_text(table.read_text(encoding="utf-8").replace("id0005/", "B/"), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"rename-identity renames") as said:
        code, _, err = run_cli(["identify", run, "--gallery", path, "--data", odd,
                                "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    [w] = [str(w.message) for w in said if "rename-identity renames" in str(w.message)]
    assert w.startswith("2 probes") and "'B'" not in w
    code, _, err = run_cli(args, capsys)
    said = " ".join(err.split())
    assert code == 2 and "if 'robert' is its new name (rename-identity), rename its folder" in said
    (data / "id0001").rename(data / "robert")
    table = data / "landmarks.csv"  # the landmark rows follow the folder's new name
    table.write_text(table.read_text(encoding="utf-8").replace("id0001/", "robert/"),
                     encoding="utf-8")  # fmt: skip
    with pytest.warns(UserWarning, match=r"3 enrolled sample\(s\) were found moved") as said:
        code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert not [w for w in said if "no longer under" in str(w.message)]  # not advised unenroll
    g = Gallery.load(path)
    assert g.identities == ["id0000", "robert", "id0002"] and g.counts().tolist() == [3, 3, 3]


def test_identities_file_selects_names_with_commas_and_blanks(trained, tmp_path, capsys):
    """Folder names may hold a comma or end in a blank; --identities (split at commas, trimmed)
    cannot name them, --identities-file (one per line, exact) can, for enroll and unenroll."""

    enroll, _, run = trained
    data = tmp_path / "data"
    odd = ["Smith, John", "trailing ", "id0002"]
    for name, src in zip(odd, ("id0000", "id0001", "id0002"), strict=True):
        shutil.copytree(enroll / src, data / name)
    path = tmp_path / "g.pt"
    args = ["enroll", run, "--gallery", path, "--data", data, "--workers", "0"]
    shutil.copy(enroll / "landmarks.csv", data / "landmarks.csv")  # the old folder names
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "the landmark file has no entry for" in err and "Smith, John" in err
    assert "on_no_face = 'center'" in err and "Fix or remove the file" not in err  # it is fine
    assert "Add its row to the landmark file (`metaemb landmarks`" in " ".join(err.split())
    assert err.count("--on-bad-sample skip") == 1 and not path.exists()
    assert "--frontend-set on_no_face=center" in err
    # After training, the frontend's access options may be set for one command; the crop not.
    code, _, err = run_cli([*args, "--frontend-set", "crop_size=64"], capsys)
    assert code == 2 and "--frontend-set crop_size: the run's frontend 'align' lets" in err
    assert "landmarks_file" in err and not path.exists()
    smith = tmp_path / "smith.txt"
    smith.write_text("Smith, John\n", encoding="utf-8")  # its files have no landmarks here
    code, _, err = run_cli([*args, "--identities-file", smith], capsys)
    assert code == 2 and "no entry for" in err
    code, _, err = run_cli([*args, "--identities-file", smith, "--frontend-set",
                            "on_no_face=center"], capsys)  # fmt: skip
    assert code == 0, err
    assert Gallery.load(path).identities == ["Smith, John"]
    path.unlink()
    # Recorded where results go: evaluate beside the plain evaluation, embed in its meta.
    code, _, err = run_cli(["evaluate", run, "--workers", "0", "--frontend-set",
                            "on_no_face=center"], capsys)  # fmt: skip
    assert code == 0, err
    [folder] = run.glob("eval-validation-frontend-*")
    assert json.loads((folder / "metrics.json").read_text())["frontend_set"] == {
        "on_no_face": "center"
    }
    code, _, err = run_cli(["embed", run, data, "--out", tmp_path / "e.pt", "--frontend-set",
                            "on_no_face"], capsys)  # fmt: skip
    assert code == 2 and "--frontend-set expects key=value (e.g. on_no_face=center)" in err
    rows = list(csv.reader((enroll / "landmarks.csv").open(encoding="utf-8")))
    renamed = {"id0000": "Smith, John", "id0001": "trailing "}
    for row in rows[1:]:  # the renamed folders' entries (a quoted path holds the comma)
        identity, rest = row[0].split("/", 1)
        row[0] = f"{renamed.get(identity, identity)}/{rest}"
    with (data / "landmarks.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    names = tmp_path / "names.txt"
    names.write_text("Smith, John\ntrailing \n", encoding="utf-8")
    code, _, err = run_cli([*args, "--identities-file", names], capsys)
    assert code == 0, err
    assert Gallery.load(path).identities == ["Smith, John", "trailing "]
    code, _, err = run_cli([*args, "--identities", "Smith, John"], capsys)  # split at the comma
    assert code == 2 and "'Smith' has no folder" in err
    names.write_text("trailing \n", encoding="utf-8")
    code, _, err = run_cli(["unenroll", "--gallery", path, "--identities-file", names], capsys)
    assert code == 0, err
    assert Gallery.load(path).identities == ["Smith, John"]
    code, _, err = run_cli(["unenroll", "--gallery", path], capsys)
    assert code == 2 and "--identities-file" in err
    # the comma split names 'Smith', which is not enrolled: said how to name 'Smith, John'
    code, _, err = run_cli(["unenroll", "--gallery", path, "--identities", "Smith, John"], capsys)
    said = " ".join(err.split())
    assert code == 2 and "(a name holding ',' goes in --identities-file)" in said, said
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run_cli([*args, "--identities-file", empty], capsys)
    assert code == 2 and "names no identity" in err
    # a name with a trailing blank given to --identities is trimmed: said how to name it (H21 F20)
    blank = tmp_path / "blank.pt"
    g = Gallery(Gallery.load(path).stamp)
    g.add("trailing ", torch.randn(1, Gallery.load(path).stamp.dim))
    g.save(blank)
    code, _, err = run_cli(["unenroll", "--gallery", blank, "--identities", "trailing "], capsys)
    said = " ".join(err.split())
    assert code == 2 and "--identities trims blanks" in said and "--identities-file" in said
    # ... but a typo of another name gets no such hint, only the suggestion (R9 F13)
    g.add("carol", torch.randn(1, Gallery.load(path).stamp.dim))
    g.save(blank)
    code, _, err = run_cli(["unenroll", "--gallery", blank, "--identities", "caroll"], capsys)
    said = " ".join(err.split())
    assert code == 2 and "did you mean 'carol'" in said and "trims blanks" not in said, said
    code, _, err = run_cli(["unenroll", "--gallery", path, "--identities", "Smit"], capsys)
    assert code == 2 and "goes in --identities-file" not in " ".join(err.split())  # R10 F11
    # classic Mac line ends (CR alone: Excel for Mac's CSV) are lines too (R9 F12)
    names.write_bytes(b"carol\rtrailing \r")
    code, _, err = run_cli(["unenroll", "--gallery", blank, "--identities-file", names], capsys)
    assert code == 0, err
    assert Gallery.load(blank).identities == []
    # a list saved as UTF-16 (Notepad's "Unicode", PowerShell's `>`) is read (H21 F15)
    names.write_text("trailing \n", encoding="utf-16")
    code, _, err = run_cli(["unenroll", "--gallery", path, "--identities-file", names], capsys)
    assert code == 2 and "'trailing ' is not enrolled" in " ".join(err.split()), err
    # a bad line is named by its line number, quoted whole when short (R7 F9)
    names.write_text("alice\n\nbob\tsmith\ncarol\n", encoding="utf-8")
    code, _, err = run_cli([*args, "--identities-file", names], capsys)
    assert code == 2 and "line 3 ('bob\\tsmith') has a tab or control character" in err, err


def test_rows_added_one_identity_at_a_time_are_joined_once_and_in_order():
    """Every add copied the whole gallery (20 000 identities: 41 s in copies); rows now wait
    and are joined when next read, in the order they were added (H15 F9)."""
    import torch

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="x", kind="point", dim=4))
    rows = [torch.randn(2, 4) for _ in range(50)]
    for i, r in enumerate(rows):
        g.add(f"p{i}", r, sources=[f"/x/{i}/a", f"/x/{i}/b"])
    assert len(g._pending) == 50  # nothing copied yet
    assert torch.equal(g.data["embeddings"], torch.cat(rows))
    assert g.owner.tolist() == [i for i in range(50) for _ in range(2)] and not g._pending
    g.add("p0", torch.randn(1, 4), sources=["/x/0/c"])  # an existing identity gets a third
    assert g.counts()[0] == 3 and g.num_samples == 101


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["identities"].__setitem__(1, d["identities"][0]), "listed twice"),
        (lambda d: d["identities"].__setitem__(0, "<new>"), "text other than '<new>'"),
        (lambda d: d["identities"].__setitem__(0, 5), "got 5"),
        (lambda d: d["sources"].__setitem__(1, d["sources"][0]), "is enrolled twice"),
        (lambda d: d.pop("samples"), "it has no 'samples' entry"),
    ],
)
def test_a_hand_edited_gallery_is_refused_on_load(tmp_path, edit, message):
    """Two identities of one name loaded and searched silently (unenroll then removed only
    one); a missing key was a bare KeyError text (H15 F12)."""
    gallery = point_gallery()
    gallery.save(tmp_path / "g.pt")
    d = torch.load(tmp_path / "g.pt", weights_only=True)
    edit(d)
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(GalleryError, match=rf"gallery '.*bad.pt' is damaged: .*{message}"):
        Gallery.load(tmp_path / "bad.pt")


def test_moves_merges_and_swaps_that_would_count_files_twice_are_followed_or_said(
    trained, tmp_path, capsys
):
    """A folder moved to a machine that embeds 0.2 % apart was enrolled twice without a word
    (R7 F10); files renamed into a merged identity's folder were too (R7 F1, H21 F5); a swap of
    names and folders took one refusal per identity (R7 F8)."""
    from metaemb.core.deploy.gallery import Gallery

    enroll, _, run = trained
    args = ["enroll", run, "--workers", "0", "--gallery"]
    # another machine: the stored embeddings 0.2 % off, the folder moved
    a, b, path = tmp_path / "A", tmp_path / "B", tmp_path / "g.pt"
    shutil.copytree(enroll, a)
    assert run_cli([*args, path, "--data", a], capsys)[0] == 0
    g = Gallery.load(path)
    noise = 1 + 0.002 * torch.randn(g.data["embeddings"].shape, generator=torch.Generator().manual_seed(0))  # fmt: skip
    g.data["embeddings"] = g.data["embeddings"] * noise
    g.save(path)
    a.rename(b)
    with pytest.warns(UserWarning, match=r"9 enrolled sample\(s\) were found moved"):
        assert run_cli([*args, path, "--data", b], capsys)[0] == 0
    assert Gallery.load(path).counts().tolist() == [3, 3, 3]
    # 5 % apart is not the same file: enrolled, and said
    g = Gallery.load(path)
    g.data["embeddings"] = g.data["embeddings"] * 1.05
    g.save(path)
    b.rename(a)
    with pytest.warns(UserWarning, match=r"9 sample\(s\) of .* have the identity and path of "
                      r"enrolled files that are gone .* but embed differently \(by [45]\.\d%"):  # fmt: skip
        assert run_cli([*args, path, "--data", a], capsys)[0] == 0

    # merged, then the files moved into the other's folder under new names: said
    m, path = tmp_path / "M", tmp_path / "m.pt"
    shutil.copytree(enroll, m)
    assert run_cli([*args, path, "--data", m], capsys)[0] == 0
    assert run_cli(["rename-identity", "--gallery", path, "id0001", "id0000", "--merge"],
                   capsys)[0] == 0  # fmt: skip
    for f in sorted((m / "id0001").iterdir()):
        f.rename(m / "id0000" / f"from1-{f.name}")
    (m / "id0001").rmdir()
    table = m / "landmarks.csv"
    table.write_text(table.read_text(encoding="utf-8").replace("id0001/", "id0000/from1-"),
                     encoding="utf-8")  # fmt: skip
    with pytest.warns(UserWarning, match=r"3 sample\(s\) of .* embed as enrolled files of "
                      r"their identity that are gone"):  # fmt: skip
        assert run_cli([*args, path, "--data", m], capsys)[0] == 0
    # a photo replaced by another one is no renamed file: nothing said (R8 F4)
    from PIL import Image, ImageOps

    (m / "id0002" / "000.png").unlink()
    ImageOps.mirror(Image.open(m / "id0002" / "001.png")).save(m / "id0002" / "new.png")
    table.write_text(table.read_text(encoding="utf-8") + "".join(
        line.replace("id0002/001.png", "id0002/new.png") + "\n"
        for line in table.read_text(encoding="utf-8").splitlines() if "id0002/001.png" in line
    ), encoding="utf-8")  # fmt: skip
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert run_cli([*args, path, "--data", m], capsys)[0] == 0
    assert not [w for w in said if "gone" in str(w.message)], [str(w.message) for w in said]

    # names swapped, then folders swapped to match: both named at once
    s, path = tmp_path / "S", tmp_path / "s.pt"
    shutil.copytree(enroll, s)
    assert run_cli([*args, path, "--data", s], capsys)[0] == 0
    for old, new in (("id0000", "tmp"), ("id0001", "id0000"), ("tmp", "id0001")):
        assert run_cli(["rename-identity", "--gallery", path, old, new], capsys)[0] == 0
    (s / "id0000").rename(s / "x")
    (s / "id0001").rename(s / "id0000")
    (s / "x").rename(s / "id0001")
    code, _, err = run_cli([*args, path, "--data", s], capsys)
    assert code == 2 and "the folders 'id0000' and 'id0001' of" in err, err
    assert "hold each other's enrolled files" in err and "--identities 'id0000,id0001'" in err


def test_rename_identity_refuses_names_no_folder_can_carry_and_unicode_twins(tmp_path, capsys):
    """'a/b', '.' and '..' were accepted, and enroll then advised renaming a folder to 'a/b'
    (H21 F1); the NFD spelling of an enrolled NFC name made a second identity that prints the
    same (H21 F2)."""
    import unicodedata

    gallery = point_gallery()
    gallery.rename("id0", unicodedata.normalize("NFC", "José"))
    path = tmp_path / "g.pt"
    gallery.save(path)
    for bad in ("a/b", ".", ".."):
        code, _, err = run_cli(["rename-identity", "--gallery", path, "id1", bad], capsys)
        assert code == 2 and "cannot be a folder's name" in err, err
    nfd = unicodedata.normalize("NFD", "José")
    code, _, err = run_cli(["rename-identity", "--gallery", path, "id1", nfd], capsys)
    assert code == 2 and "only in Unicode form (NFC and NFD)" in err, err
    assert "'Jos\\xe9'" in err
    assert Gallery.load(path).identities == gallery.identities  # nothing changed
    # both forms enrolled (an older gallery): the exact name is merged into, not refused
    # as its twin (H21 F14)
    g = Gallery.load(path)
    g.add(nfd, g.samples[:1])
    g.save(path)
    nfc = unicodedata.normalize("NFC", "José")
    code, out, err = run_cli(["rename-identity", "--gallery", path, "id1", nfc, "--merge"], capsys)
    assert code == 0 and f"merged 'id1' into '{nfc}'" in out, err


def test_results_tables_never_replace_a_model_a_sidecar_or_metrics(trained, tmp_path, capsys):
    """`identify --out deploy/m.pt` replaced a 45 MB TorchScript export with a TSV, and its
    sidecar and an evaluation's metrics.json alike (H21 F13); an earlier table is replaced."""
    enroll, probes, run = trained
    path = tmp_path / "g.pt"
    assert run_cli(["enroll", run, "--gallery", path, "--data", enroll, "--workers", "0"],
                   capsys)[0] == 0  # fmt: skip
    model, sidecar, metrics = (
        tmp_path / "m.onnx",
        tmp_path / "m.onnx.json",
        tmp_path / "metrics.json",
    )
    model.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(100))
    sidecar.write_text('{"format": "onnx"}')
    metrics.write_text('{"eer": 0.1}')
    args = ["identify", run, "--gallery", path, "--data", probes, "--workers", "0", "--out"]
    for other in (model, sidecar, metrics):
        before = other.read_bytes()
        code, _, err = run_cli([*args, other], capsys)
        assert code == 2 and "is not one that `metaemb identify` wrote" in err, err
        assert other.read_bytes() == before
    table = tmp_path / "results.tsv"
    for _ in range(2):  # written, then replaced by the same command
        assert run_cli([*args, table], capsys)[0] == 0
    assert table.read_text().startswith("probe\tidentity\trank")


def test_a_folder_moved_with_its_names_in_another_unicode_form_is_followed(
    trained, tmp_path, capsys
):
    """A data folder copied through macOS comes back with NFD names: 'José' was enrolled a
    second time, as an identity that prints the same, while 'bob' beside it was followed
    (H21 F9)."""
    import unicodedata

    from metaemb.core.deploy.gallery import Gallery

    enroll, _, run = trained
    nfc, nfd = (unicodedata.normalize(f, "José") for f in ("NFC", "NFD"))
    a, b, path = tmp_path / "A", tmp_path / "B", tmp_path / "g.pt"
    shutil.copytree(enroll, a)
    (a / "id0000").rename(a / nfc)
    table = a / "landmarks.csv"
    table.write_text(table.read_text(encoding="utf-8").replace("id0000/", f"{nfc}/"),
                     encoding="utf-8")  # fmt: skip
    args = ["enroll", run, "--gallery", path, "--workers", "0", "--data"]
    assert run_cli([*args, a], capsys)[0] == 0
    a.rename(b)
    (b / nfc).rename(b / nfd)
    table = b / "landmarks.csv"
    table.write_text(table.read_text(encoding="utf-8").replace(f"{nfc}/", f"{nfd}/"),
                     encoding="utf-8")  # fmt: skip
    with pytest.warns(UserWarning, match=r"spelled in another Unicode form") as said:
        code, _, err = run_cli([*args, b], capsys)
    assert code == 0, err
    assert any("9 enrolled sample(s) were found moved" in str(w.message) for w in said)
    g = Gallery.load(path)
    assert g.identities == [nfc, "id0001", "id0002"] and g.counts().tolist() == [3, 3, 3]


def test_swap_advice_is_a_command_a_shell_takes_for_any_two_names():
    """The swapped-folders refusal advised `--identities 'a,b'`, which a shell breaks for
    O'Brien and which splits 'Smith, J' in two (R8 F14): the names are shell-quoted, and names
    with a comma are sent to --identities-file."""
    import shlex

    from metaemb.core.deploy.enrollment import _identities_argument

    said = _identities_argument("O'Brien", "Lee")
    assert shlex.split(said) == ["--identities", "O'Brien,Lee"]
    assert _identities_argument("id0000", "id0001") == "--identities 'id0000,id0001'"
    said = _identities_argument("Smith, J", "Lee")
    assert said.startswith("--identities-file") and "'Smith, J'" in said


def test_following_moved_files_looks_only_at_each_identitys_own_rows(monkeypatch):
    """Looking for gone files of a new sample's identity walked every gallery row once per
    identity: enroll of many new identities into a large gallery was quadratic again (R9 F4).
    Only the identity's own rows are checked on disk, and none for a brand-new identity."""
    import types

    from metaemb.core.deploy import enrollment
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=8, config_hash="abcd1234", epoch=2))
    for i in range(30):
        g.add(f"id{i:02d}", torch.randn(3, 8), [f"/old/id{i:02d}/{j}.png" for j in range(3)])
    looked: list[str] = []
    monkeypatch.setattr(enrollment, "source_exists", lambda s: looked.append(s) or False)
    walks = []  # whole walks over the gallery's rows

    class Rows(list):
        def __iter__(self):
            walks.append(len(self))
            return super().__iter__()

    owners = g.owner
    monkeypatch.setattr(Gallery, "owner", property(lambda self: types.SimpleNamespace(
        tolist=lambda: Rows(owners.tolist()))))  # fmt: skip
    names = ["new0", "new1", "id07"]  # two new identities and a new photo of id07
    samples = [types.SimpleNamespace(identity=n, path=f"{n}/9.png") for n in names]
    folder = types.SimpleNamespace(root="/tmp/newroot", samples=samples, identities=names)
    sources = [f"/tmp/newroot/{n}/9.png" for n in names]
    keep, _, moved = enrollment._follow_moved(
        g, folder, sources, [0, 1, 2], torch.randn(3, 8), {n: n for n in names}
    )
    assert moved == 0 and len(keep) == 3
    assert sorted(looked) == [f"/old/id07/{j}.png" for j in range(3)], looked
    assert len(walks) <= 1, walks  # one walk in all, not one per identity


@pytest.mark.parametrize("renames", [{"id0": "Alice"}, {"id0": "Alice", "id1": "Bob"}])
def test_probes_named_as_before_a_rename_are_said_when_every_identity_was_renamed(renames):
    """The renamed-identity warning learnt where identity folders stand from folders named as
    enrolled identities: with every identity renamed (ids to people's names, the usual case)
    none is, and nothing was said (R9 F3). A folder above the identity folders, shared by
    all, is still never taken for one."""
    import warnings

    from metaemb.core.deploy import search
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=8, config_hash="abcd1234", epoch=2))
    for name in renames:
        g.add(name, torch.randn(3, 8), [f"/data/gal/{name}/{j}.png" for j in range(3)])
    for old, new in renames.items():
        g.rename(old, new)
    for truth, expected in [(["id0", "id0", *renames.values()], "'id0' (enrolled as 'Alice')"),
                            (["gal", "gal", *renames.values()], None)]:  # fmt: skip
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            search._warn_renamed_labels(g, truth)
        told = [str(w.message) for w in said if "rename-identity" in str(w.message)]
        if expected:
            assert len(told) == 1 and expected in told[0] and told[0].startswith("2 probes")
        elif len(renames) > 1:  # one identity alone cannot tell its folder from the one above
            assert not told, told


def test_a_python_save_over_a_gallery_changed_since_its_load_is_refused(tmp_path):
    """A service's Gallery.load → rename → save silently dropped a person `metaemb enroll`
    added in between (L3 F6): saving over the file it was loaded from refuses when the file
    changed since; saving elsewhere, or after loading again, works."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import GalleryError

    path = tmp_path / "staff.pt"
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    g.add("alice", torch.randn(2, 4))
    g.save(path)
    g.add("carol", torch.randn(1, 4))
    g.save(path)  # its own earlier save is no change by another writer
    service = Gallery.load(path)
    other = Gallery.load(path)  # the enroll command
    other.add("bob", torch.randn(1, 4))
    other.save(path)
    service.rename("alice", "Alice")
    with pytest.raises(GalleryError, match="changed on disk since it was loaded"):
        service.save(path)
    assert Gallery.load(path).identities == ["alice", "carol", "bob"]  # bob kept
    service.save(tmp_path / "elsewhere.pt")
    fresh = Gallery.load(path)
    fresh.rename("alice", "Alice")
    fresh.save(path)
    assert Gallery.load(path).identities == ["Alice", "carol", "bob"]
    # a file only touched, the same bytes copied back, or one gone drops nothing: saved (R10 F7)
    import os
    import shutil

    for change in ("touch", "copy back", "remove"):
        g = Gallery.load(path)
        if change == "touch":
            os.utime(path, ns=(1, 1))
        elif change == "copy back":
            shutil.copy(path, tmp_path / "same.pt")
            os.replace(tmp_path / "same.pt", path)
        else:
            path.unlink()
        g.save(path)
    # a re-enrollment keeps names, sources and counts but not the embeddings: still a change
    # another writer made, which a stale copy must not overwrite (R11 F3)
    service = Gallery.load(path)
    other = Gallery.load(path)
    n = int((other.owner == other.identities.index("bob")).sum())
    other.remove("bob")
    other.add("bob", torch.ones(n, 4))
    other.save(path)
    service.add("dave", torch.randn(1, 4))
    with pytest.raises(GalleryError, match="changed on disk since it was loaded"):
        service.save(path)
    # a backup first, then the file it was loaded from: both are this gallery's own files, not
    # "another gallery"; a change by another writer in between is refused even with
    # overwrite=True, which is for other galleries' files (R11 F2)
    g = Gallery.load(path)
    g.add("erin", torch.randn(1, 4))
    g.save(tmp_path / "backup.pt")
    g.save(path)
    assert Gallery.load(path).identities[-1] == "erin"
    g.save(tmp_path / "backup.pt")
    other = Gallery.load(path)
    other.add("frank", torch.randn(1, 4))
    other.save(path)
    g.add("gina", torch.randn(1, 4))
    for overwrite in (False, True):
        with pytest.raises(GalleryError, match="changed on disk since it was loaded"):
            g.save(path, overwrite=overwrite)
    # a reader never pays for the change check: nothing is digested to load and search (R12 F4)
    digests = []
    real = Gallery._fingerprint

    def counted(self):
        digests.append(1)
        return real(self)

    Gallery._fingerprint = counted
    try:
        reader = Gallery.load(path)
        reader.search(torch.randn(2, 4), k=1)
        assert digests == []
        reader.add("hana", torch.randn(1, 4))  # the digest of the contents as loaded, once
        reader.add("ivan", torch.randn(1, 4))
        assert digests == [1]
    finally:
        Gallery._fingerprint = real


def test_python_saves_refuse_what_the_commands_refuse(tmp_path):
    """Gallery.save and Collection.save overwrote a run's last.pt or an ONNX export that
    `metaemb enroll` and `metaemb embed` refuse to touch, and wrote a torch file named g.npz
    (L3 F17)."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.retrieval import Collection

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    torch.save({"model": {}, "config": {}, "epoch": 1}, run / "last.pt")
    export = tmp_path / "best.onnx"
    export.write_bytes(b"\x08\x07onnx-ish")
    before = {p: p.read_bytes() for p in (run / "last.pt", export)}
    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    g.add("alice", torch.randn(2, 4))
    for target in (run / "last.pt", export, tmp_path / "g.npz"):
        with pytest.raises(MetaembError) as caught:
            g.save(target)
        assert str(target.name) in str(caught.value), caught.value
    c = Collection(["a/1.png", "a/2.png"], ["a", "a"], torch.randn(2, 4))
    for target in (run / "last.pt", tmp_path / "g.pt"):
        if target.name == "g.pt":
            g.save(target)  # a gallery is no embeddings file either
        with pytest.raises(MetaembError):
            c.save(target)
    assert {p: p.read_bytes() for p in before} == before
    assert isinstance(Gallery.load(tmp_path / "g.pt"), Gallery)
    c.save(tmp_path / "c.npz")
    c.save(tmp_path / "c.npz")  # its own kind of file is replaced
    # an empty file (tempfile.NamedTemporaryFile, a scheduler's placeholder) holds nothing to
    # lose: saved into, as before (R10 F8)
    for name, obj in (("empty.pt", g), ("empty.npz", c)):
        (tmp_path / name).touch()
        obj.save(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0


def test_float64_probes_are_searched_as_float32_samples_are_stored():
    """`add` took float64 embeddings (from numpy) and stored them as float32; `search` and
    `score_matrix` then failed on float64 probes with torch's 'expected m1 and m2 to have the
    same dtype' (L3 F1)."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    emb = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    g.add("a", emb[:3])
    g.add("b", emb[3:])
    wide = g.score_matrix(emb)
    assert torch.allclose(wide, g.score_matrix(emb.float()))
    assert (
        g.search(emb, k=1).index[:, 0].tolist() == g.search(emb.float(), k=1).index[:, 0].tolist()
    )


def test_add_takes_a_name_in_another_unicode_form_as_the_enrolled_one():
    """`Gallery.add('Zoë' in NFD)` after the NFC 'Zoë' made a second identity that prints the
    same, each pooled from half the samples (L3 F11), which enroll and rename guard against."""
    import unicodedata

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1))
    g.add(unicodedata.normalize("NFC", "Zoë"), torch.randn(1, 4))
    g.add(unicodedata.normalize("NFD", "Zoë"), torch.randn(2, 4))
    assert g.identities == [unicodedata.normalize("NFC", "Zoë")] and g.counts().tolist() == [3]


def test_saving_over_another_gallery_asks_for_overwrite(tmp_path):
    """Gallery.load('c9.pt').save('team.pt') replaced the team's gallery, and the identities
    enroll had put there, without a word (H23 F6): refused, naming what it holds, unless asked."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.errors import GalleryError

    stamp = ModelStamp(digest="0" * 16, kind="point", dim=4, config_hash="abcd1234", epoch=1)
    team, mine = Gallery(stamp), Gallery(stamp)
    team.add("id0004", torch.randn(1, 4))
    team.save(tmp_path / "team.pt")
    mine.add("alice", torch.randn(1, 4))
    with pytest.raises(GalleryError, match=r"another gallery \(1 identities, 'id0004'\)"):
        mine.save(tmp_path / "team.pt")
    assert Gallery.load(tmp_path / "team.pt").identities == ["id0004"]
    mine.save(tmp_path / "team.pt", overwrite=True)
    assert Gallery.load(tmp_path / "team.pt").identities == ["alice"]


def test_the_reported_threshold_at_fpir_gives_that_fpir_as_threshold(tmp_path):
    """threshold_at_fpir was the best rejected non-mated score itself, which `--threshold`
    (accepting scores at or above it) lets through (R12 F1, H25 F3): it is the next float up."""
    from metaemb.core.deploy.gallery import NEW, Gallery
    from metaemb.core.deploy.search import _metrics
    from metaemb.core.deploy.stamp import ModelStamp

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=2, config_hash="abcd1234", epoch=1))
    g.add("a", torch.tensor([[1.0, 0.0]]))
    g.add("b", torch.tensor([[0.0, 1.0]]))
    probes = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # a mated probe of a; a stranger near b
    truth = ["a", "stranger"]
    found = _metrics(g, probes, None, truth, g.search(probes, k=1))
    cut = found["threshold_at_fpir_0.1"]
    assert cut > g.score_matrix(probes)[1].max().item()
    decided = g.search(probes, k=1, threshold=cut).decisions()
    assert decided == ["a", NEW]


def test_searches_reuse_the_pooled_gallery_until_it_changes():
    """Every search pooled the whole gallery again (and rebuilt the faiss index): one probe
    against 100k identities took 1.4 s (F4 F6). The pooled models are kept per scorer state
    until the gallery changes; results are the same."""
    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.gallery_search import scorer_key
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.plugin.components import build

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=8, config_hash="abcd1234", epoch=1))
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        g.add(f"p{i}", torch.randn(3, 8, generator=gen))
    probes = torch.randn(5, 8, generator=gen)
    scorer = build("scorers", "cosine", {"subtract_mean": True, "adapt_mean": True})
    scorer.fit(g.samples, g.owner)
    first = g.score_matrix(probes, scorer)
    assert len(g.search_cache) == 1
    assert torch.equal(g.score_matrix(probes, scorer), first)  # from the cache
    other = build("scorers", "cosine", {"subtract_mean": True, "adapt_mean": True})
    other.fit(g.samples, g.owner)
    assert scorer_key(other) == scorer_key(scorer)  # another object in the same state
    other.adapt(probes)  # another state: its own entry, other scores
    assert scorer_key(other) != scorer_key(scorer)
    assert not torch.allclose(g.score_matrix(probes, other), first)
    g.add("new", probes[:1])  # a change drops the cache: the new identity is scored
    assert not g.search_cache
    assert g.search(probes[:1], k=1, scorer=scorer).names(0) == ["new"]


def test_the_search_cache_follows_scorer_state_in_any_container_and_stays_bounded():
    """A plugin scorer keeping its state in a dict or a numpy array was keyed by the
    container's type only: searched with stale pooled models after adapting again (R13 F1);
    a scorer adapted per request filled the cache without bound."""
    import numpy as np

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.gallery_search import CACHED_STATES, scorer_key
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.scoring.scorers import PointScorer

    class Centred(PointScorer):  # state in a dict, as a plugin may keep it
        def __init__(self):
            self.state = {"centre": torch.zeros(8)}
            self.spare = np.zeros(3)

        def prepare(self, x):
            return torch.nn.functional.normalize(x.double() - self.state["centre"].double(), dim=1)

        def block(self, models, n, test):
            return models @ test.T

        def pairs(self, models, counts, test):
            return (models * test).sum(1)

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=8, config_hash="abcd1234", epoch=1))
    gen = torch.Generator().manual_seed(0)
    for i in range(10):
        g.add(f"p{i}", torch.randn(2, 8, generator=gen))
    probes = torch.randn(3, 8, generator=gen)
    sc = Centred()
    g.score_matrix(probes, sc)
    for shift in (1.0, 2.0):
        sc.state["centre"] = torch.full((8,), shift)  # adapted again
        cached = g.score_matrix(probes, sc)
        g.search_cache.clear()
        assert torch.allclose(cached, g.score_matrix(probes, sc))
    key = scorer_key(sc)
    sc.spare[0] = 1.0  # a numpy array is read too
    assert scorer_key(sc) != key
    sc.hook = lambda x: x  # an attribute it cannot read: no key, pooled every time
    assert scorer_key(sc) is None
    del sc.hook
    for shift in range(10):  # bounded however many states are searched with
        sc.state["centre"] = torch.full((8,), float(shift))
        g.score_matrix(probes, sc)
    assert len(g.search_cache) <= CACHED_STATES


def test_threads_searching_one_gallery_share_its_cache():
    """Searches write the gallery's cache: threads searching at once sometimes failed with a
    KeyError (R13 F9); docs/gallery.md lets reads share a gallery."""
    import threading

    from metaemb.core.deploy.gallery import Gallery
    from metaemb.core.deploy.stamp import ModelStamp
    from metaemb.core.plugin.components import build

    g = Gallery(ModelStamp(digest="0" * 16, kind="point", dim=8, config_hash="abcd1234", epoch=1))
    gen = torch.Generator().manual_seed(0)
    for i in range(30):
        g.add(f"p{i}", torch.randn(2, 8, generator=gen))
    scorers = []
    for shift in range(8):  # more states than the cache keeps: evictions race with reads
        sc = build("scorers", "cosine", {"subtract_mean": True})
        sc.fit(g.samples + shift, g.owner)
        scorers.append(sc)
    errors: list[BaseException] = []

    def search(k: int) -> None:
        try:
            for i in range(40):
                g.search(torch.randn(2, 8), k=3, scorer=scorers[(i + k) % len(scorers)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
