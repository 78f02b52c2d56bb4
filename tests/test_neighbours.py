"""`metaemb embed` on loose files and `metaemb neighbours` end to end on a tiny trained face model.

Known answers: a file embedded alone equals its row in the folder's collection; its nearest
neighbour is itself (cosine 1); faiss and exact search return the same neighbours; the
leave-one-out retrieval metrics equal a brute-force numpy computation."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch

from metaemb.core.eval.retrieval import Collection, nearest


@pytest.fixture(scope="module")
def trained(tiny_face_run) -> tuple[Path, Path]:
    return tiny_face_run


def test_embed_files_match_folder_rows(trained, tmp_path):
    data, run = trained
    coll_file, probe_file = tmp_path / "coll.pt", tmp_path / "probe.pt"
    code, _, _ = helpers.run_cli(["embed", run, data, "--out", coll_file, "--workers", "0"])
    assert code == 0
    files = sorted(data.glob("*/*.png"))[:3:2]
    code, _, _ = helpers.run_cli(["embed", run, *files, "--out", probe_file, "--workers", "0"])
    assert code == 0
    coll, probe = Collection.load(coll_file), Collection.load(probe_file)
    assert len(coll) == 40 and len(probe) == 2
    assert probe.identities == [f.parent.name for f in files]
    assert probe.meta["model_digest"] == coll.meta["model_digest"]
    # root is absolute and root / path names the file, for a folder and loose files alike
    for c in (coll, probe):
        assert Path(c.meta["root"]).is_absolute()
        assert all((Path(c.meta["root"]) / p).is_file() for p in c.paths)
    assert probe.paths == [f.relative_to(data).as_posix() for f in files]  # grandparent: data
    for f, row in zip(files, probe.embeddings, strict=True):
        i = coll.paths.index(f.relative_to(data).as_posix())
        torch.testing.assert_close(row, coll.embeddings[i], atol=1e-5, rtol=1e-5)


def test_a_quoted_pattern_of_sample_files_is_those_files(trained, tmp_path, capsys):
    """A quoted glob of PNG files (a script, or Python) was taken for tar shards: 'a folder is
    its own root', 'names packed files (tar shards?)' (R7 F7). It is the files it names, as the
    shell would have given them; a pattern of identity folders as --data is named as such."""
    data, run = trained
    files = sorted((data / "id0000").glob("*.png"))
    out = tmp_path / "p.npz"
    code, _, err = helpers.run_cli(["embed", run, str(data / "id0000" / "*.png"), "--root",
                                       data, "--out", out, "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    coll = Collection.load(out)
    assert coll.paths == [f.relative_to(data).as_posix() for f in files]
    code, _, err = helpers.run_cli(["embed", run, str(data / "id000[01]"), "--out",
                                    tmp_path / "q.npz", "--workers", "0"], capsys)  # fmt: skip
    said = " ".join(err.split())
    assert code == 2 and "is a pattern of 2 files or folders" in said, said
    assert "tar shards" not in said and "--root" not in said
    args = ["evaluate", run, "--data", str(data / "id000[01]"), "--out", tmp_path / "ev"]
    code, _, err = helpers.run_cli(args, capsys)
    said = " ".join(err.split())
    assert code == 2 and "is a pattern of 2 files or folders" in said, said
    assert "tar shards" not in said


def test_embed_root_names_the_identities_of_files_in_nested_folders(trained, tmp_path, capsys):
    """Files in <identity>/<session>/<file> were named after their session folder; with --root
    the run's sample folder names them (its identity_of), as it does in training."""
    import shutil

    data, run = trained
    nested = tmp_path / "nested"
    files = []
    for who, src in zip(("alice", "bob"), sorted(data.glob("*/*.png"))[:2], strict=True):
        (nested / who / "session1").mkdir(parents=True)
        files.append(Path(shutil.copy(src, nested / who / "session1" / src.name)))
    base = ["embed", run, *files, "--workers", "0", "--out"]
    code, _, err = helpers.run_cli([*base, tmp_path / "a.pt"])
    assert code == 0, err
    code, _, err = helpers.run_cli([*base, tmp_path / "b.pt", "--root", nested])
    assert code == 0, err
    by_parent, by_root = Collection.load(tmp_path / "a.pt"), Collection.load(tmp_path / "b.pt")
    assert by_parent.identities == ["session1", "session1"]
    assert by_root.identities == ["alice", "bob"]
    assert by_root.paths == [f.relative_to(nested).as_posix() for f in files]
    torch.testing.assert_close(by_parent.embeddings, by_root.embeddings)
    code, out, err = helpers.run_cli([*base, tmp_path / "c.pt", "--root", data], capsys)
    assert code == 2 and "is not inside an identity folder of --root" in " ".join(
        (out + err).split()
    )
    code, out, err = helpers.run_cli(
        ["embed", run, nested, "--root", nested, "--out", tmp_path / "d.pt"], capsys
    )
    assert code == 2 and "--root is for sample files" in out + err


def test_identify_takes_the_root_its_own_naming_note_points_at(trained, tmp_path, capsys):
    """The note for runs whose folder names identities its own way said "give --root DATA",
    an option identify did not have (P15 F1)."""
    import shutil

    data, run = trained
    nested = tmp_path / "nested" / "alice" / "session1"
    nested.mkdir(parents=True)
    probe = Path(shutil.copy(sorted(data.glob("*/*.png"))[0], nested / "p.png"))
    gallery = tmp_path / "g.pt"
    code, _, err = helpers.run_cli(["enroll", run, "--gallery", gallery, "--data", data,
                                    "--workers", "0"], capsys)  # fmt: skip
    assert code == 0, err
    base = ["identify", run, "--gallery", gallery, "--probe", probe, "--workers", "0"]
    code, out, err = helpers.run_cli([*base, "--root", tmp_path / "nested"], capsys)
    assert code == 0, err
    assert "p.png" in out
    code, out, err = helpers.run_cli([*base, "--root", data], capsys)
    assert code == 2 and "is not inside an identity folder of --root" in " ".join(
        (out + err).split()
    )
    # neighbours too (P15 F10): the probe named under --root, as embed --root names it
    coll = tmp_path / "coll.npz"
    code, _, err = helpers.run_cli(["embed", run, data, "--out", coll, "--workers", "0"], capsys)
    assert code == 0, err
    out_json = tmp_path / "n.json"
    code, _, err = helpers.run_cli(["neighbours", coll, probe, "--root", tmp_path / "nested",
                                    "--out", out_json], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(out_json.read_text())["probes"][0]["probe"] == "alice/session1/p.png"
    code, _, err = helpers.run_cli(["neighbours", coll, "--root", data], capsys)
    assert code == 2 and "--root applies to probe files" in " ".join(err.split())


def test_embed_without_root_says_when_the_runs_folder_names_identities_its_own_way():
    """Loose files are named after their folder ('forgery'); a run whose folder's identity_of
    says `u001/forgery` gets a note pointing at --root, a plain folder none."""
    import warnings

    from metaemb.core.eval.collect import _note_own_naming
    from metaemb.plugins.vision.folder import ImageFolder

    class Forgeries(ImageFolder):
        def identity_of(self, path):
            return path.rsplit("/", 1)[0]

    with pytest.warns(UserWarning, match="names identities its own way.*Give --root DATA"):
        _note_own_naming(Forgeries, "forgeries")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _note_own_naming(ImageFolder, "image")


def test_a_bad_file_met_after_training_says_what_to_do_here(trained, tmp_path, capsys):
    """The reader's hint 'with on_bad_sample='skip' it is skipped' named an option that embed,
    evaluate, enroll and identify do not have."""
    import shutil

    from metaemb.core.deploy.loading import _needs_every_file

    said = _needs_every_file("audio 'a.wav' is empty. Remove the file (with on_bad_sample="
                             "'skip' it is skipped).")  # fmt: skip
    assert "on_bad_sample='skip'" not in said and said.startswith("audio 'a.wav' is empty.")
    assert said.endswith("Fix or remove the file: `train` and `embed` can leave such files out "
                         "with --on-bad-sample skip (skip_bad=True in embed_inputs); `evaluate`, "
                         "`enroll` and `identify` need every file they are given.")  # fmt: skip
    data, run = trained
    assert helpers.run_cli(["embed", run, data, "--out", tmp_path / "full.pt"])[0] == 0
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    broken = sorted(copy.glob("*/*.png"))[3]
    broken.write_bytes(b"not a png")
    code, _, err = helpers.run_cli(["embed", run, copy, "--out", tmp_path / "e.pt"], capsys)
    assert code == 2 and "Fix or remove the file: `train` and `embed`" in " ".join(err.split())
    assert not (tmp_path / "e.pt").exists()
    # embed --on-bad-sample skip leaves it out, says so, and keeps every other row in place.
    args = ["embed", run, copy, "--out", tmp_path / "e.pt", "--on-bad-sample", "skip"]
    with pytest.warns(UserWarning, match=r"skipped 1 sample\(s\) that could not be read"):
        code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    kept, full = Collection.load(tmp_path / "e.pt"), Collection.load(tmp_path / "full.pt")
    rel = broken.relative_to(copy).as_posix()
    assert rel not in kept.paths and len(kept) == len(full) - 1
    for path, row in zip(kept.paths, kept.embeddings, strict=True):
        torch.testing.assert_close(row, full.embeddings[full.paths.index(path)])


def test_embed_to_a_numpy_archive(trained, tmp_path, capsys):
    """`--out X.npz` is a NumPy archive readable without pickle, holding what the torch file
    holds; neighbours reads it alike. A name promising another format is refused up front."""
    data, run = trained
    pt, npz = tmp_path / "coll.pt", tmp_path / "coll.npz"
    for out in (pt, npz):
        assert helpers.run_cli(["embed", run, data, "--out", out, "--workers", "0"])[0] == 0
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    coll = Collection.load(pt)
    np.testing.assert_array_equal(arrays["embeddings"], coll.embeddings.numpy())
    assert (
        arrays["paths"].tolist() == coll.paths and arrays["identities"].tolist() == coll.identities
    )
    assert str(arrays["model_digest"]) == coll.meta["model_digest"]
    again = Collection.load(npz)
    assert again.paths == coll.paths and again.meta == coll.meta
    reports = []
    for f in (pt, npz):
        out = tmp_path / f"{f.suffix[1:]}.json"
        assert helpers.run_cli(["neighbours", f, "--out", out], capsys)[0] == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0] == reports[1] and reports[0]["samples"] == 40
    for name, says in (("x.npy", "not .npy"), ("xvector.ark", "For Kaldi, write .npz"),
                       ("xvector.scp", "not .scp"), ("emb", "needs one of those suffixes")):  # fmt: skip
        # a Kaldi name held a torch zip, which Kaldi's tools read as garbage (S3-15)
        code, _, err = helpers.run_cli(["embed", run, data, "--out", tmp_path / name], capsys)
        said = " ".join(err.split())
        assert code == 2 and "a torch file (.pt, .pth) or a NumPy archive (.npz)" in said, said
        assert says in said and not (tmp_path / name).exists()


def test_neighbours_results_never_replace_another_file(trained, tmp_path, capsys):
    """`neighbours --out deploy/m.pt` replaced a model with 523 bytes of JSON (H21 F13)."""
    data, run = trained
    coll = tmp_path / "coll.npz"
    assert helpers.run_cli(["embed", run, data, "--out", coll, "--workers", "0"])[0] == 0
    model = tmp_path / "m.pt"
    model.write_bytes(b"PK\x03\x04" + bytes(100))
    code, _, err = helpers.run_cli(["neighbours", coll, "--out", model], capsys)
    assert code == 2 and "is not one that `metaemb neighbours` wrote" in " ".join(err.split())
    assert model.read_bytes() == b"PK\x03\x04" + bytes(100)
    out = tmp_path / "loo.json"
    for _ in range(2):
        assert helpers.run_cli(["neighbours", coll, "--out", out], capsys)[0] == 0
    probe = sorted(data.glob("*/*.png"))[0]
    assert helpers.run_cli(["neighbours", coll, probe, "--out", out], capsys)[0] == 0


def test_neighbours_of_a_probe_faiss_equals_exact(trained, tmp_path, capsys):
    data, run = trained
    coll_file = tmp_path / "coll.pt"
    assert helpers.run_cli(["embed", run, data, "--out", coll_file, "--workers", "0"])[0] == 0
    probe = sorted(data.glob("*/*.png"))[5]
    results = {}
    for backend in ("exact", "faiss"):
        out = tmp_path / f"{backend}.json"
        args = ["neighbours", coll_file, probe, "-k", "4", "--backend", backend, "--out", out]
        code, text, err = helpers.run_cli(args, capsys)
        assert code == 0, err
        results[backend] = json.loads(out.read_text())
        assert results[backend]["backend"] == backend
    ex, fa = (results[b]["probes"][0]["neighbours"] for b in ("exact", "faiss"))
    assert [h["path"] for h in ex] == [h["path"] for h in fa]
    np.testing.assert_allclose([h["score"] for h in ex], [h["score"] for h in fa], atol=1e-5)
    assert ex[0]["path"] == probe.relative_to(data).as_posix()  # itself, at cosine 1
    assert ex[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(ex) == 4 and "nearest to" in text


def test_collection_metrics_match_brute_force(trained, tmp_path, capsys):
    data, run = trained
    coll_file, out = tmp_path / "coll.pt", tmp_path / "m.json"
    assert helpers.run_cli(["embed", run, data, "--out", coll_file, "--workers", "0"])[0] == 0
    code, text, err = helpers.run_cli(["neighbours", coll_file, "--out", out], capsys)
    assert code == 0, err
    got = json.loads(out.read_text())
    coll = Collection.load(coll_file)
    x = torch.nn.functional.normalize(coll.embeddings.double(), dim=1).numpy()
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    lab = np.array(coll.identities)
    p1, rp, mapr, cmc5 = [], [], [], []
    for q in range(len(lab)):
        order = np.argsort(-s[q], kind="stable")[:-1]  # drop itself (last, at -inf)
        rel = lab[order] == lab[q]
        r = int(rel.sum())
        p1.append(rel[0])
        rp.append(rel[:r].sum() / r)
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        mapr.append((prec * rel[:r]).sum() / r)
        cmc5.append(rel[:5].any())
    assert got["precision_at_1"] == pytest.approx(np.mean(p1))
    assert got["rank_1"] == pytest.approx(np.mean(p1))
    assert got["r_precision"] == pytest.approx(np.mean(rp))
    assert got["map_at_r"] == pytest.approx(np.mean(mapr))
    assert got["rank_5"] == pytest.approx(np.mean(cmc5))
    assert got["queries"] == 40 and len(got["cmc"]) == 10
    assert "precision_at_1" in text


def test_nearest_faiss_and_exact_agree_on_random_vectors():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    base, probes = torch.randn(500, 24, generator=g), torch.randn(30, 24, generator=g)
    s_ex, i_ex, b1 = nearest(base, probes, 7, backend="exact")
    s_fa, i_fa, b2 = nearest(base, probes, 7, backend="faiss")
    assert (b1, b2) == ("exact", "faiss")
    assert torch.equal(i_ex, i_fa)
    torch.testing.assert_close(s_ex, s_fa, atol=1e-5, rtol=0)
    brute = (
        torch.nn.functional.normalize(probes, dim=1) @ torch.nn.functional.normalize(base, dim=1).T
    )
    assert torch.equal(i_ex, brute.topk(7, dim=1).indices)


def test_neighbours_refuses_a_probe_from_another_model(trained, tmp_path, capsys):
    data, run = trained
    fake = tmp_path / "fake.pt"
    Collection(["a/1.png"], ["a"], torch.randn(1, 16), {"checkpoint": str(run / "best.pt"),
               "model_digest": "0" * 16}).save(fake)  # fmt: skip
    probe = sorted(data.glob("*/*.png"))[0]
    code, _, err = helpers.run_cli(["neighbours", fake, probe, "--backend", "exact"], capsys)
    assert code == 2 and "not the model that embedded" in err


@pytest.mark.parametrize("command", ["neighbours", "plot", "lr-find", "landmarks"])
def test_unusable_output_is_refused_before_any_work(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out.json"  # a file stands where a folder must be
    args = {
        "neighbours": ["neighbours", tmp_path / "missing.pt", "--out", out],
        "plot": ["plot", tmp_path, "--out", out],
        "lr-find": ["lr-find", "--out", blocker / "lr.png"],
        "landmarks": ["landmarks", tmp_path, "--out", blocker / "lm.csv"],
    }[command]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 2 and "is a file, not a folder" in " ".join(err.split()), err


def test_a_fitted_scorer_is_found_in_a_collection_embedded_from_a_run_directory(
    trained, tmp_path, capsys
):
    """`embed RUN_DIR` stores the directory; neighbours looked for a checkpoint file there and
    said the run held no fitted scorer. The run's best.pt is used, as everywhere else."""
    import shutil

    from metaemb.core.checkpoints import load_checkpoint, save_checkpoint
    from metaemb.core.plugin.components import build

    data, trained_run = trained
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "last.pt").unlink()
    state = load_checkpoint(run / "best.pt")  # made a run whose own scorer is a fitted PLDA
    plda = build("scorers", "plda", {"lda_dim": 4})
    plda.fit(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)),
             torch.arange(8).repeat_interleave(4))  # fmt: skip
    state["config"]["eval"]["scorer"], state["config"]["scorer"] = "plda", {"lda_dim": 4}
    state["scorer"] = plda.state_dict()
    save_checkpoint(run / "best.pt", state)
    coll_file, probe = tmp_path / "coll.pt", sorted(data.glob("*/*.png"))[5]
    assert helpers.run_cli(["embed", run, data, "--out", coll_file, "--workers", "0"])[0] == 0
    assert Collection.load(coll_file).meta["checkpoint"] == str(run.resolve())
    out = tmp_path / "n.json"
    args = ["neighbours", coll_file, probe, "-k", "3", "--scorer", "plda", "--out", out]
    code, _, err = helpers.run_cli(args, capsys)
    assert code == 0, err
    hits = json.loads(out.read_text())["probes"][0]["neighbours"]
    coll = Collection.load(coll_file)
    me = coll.embeddings[coll.paths.index(probe.relative_to(data).as_posix())]
    want = plda.score_matrix(coll.embeddings, me[None])[:, 0]  # the fitted PLDA's scores
    top = torch.topk(want, 3).indices.tolist()
    assert [h["path"] for h in hits] == [coll.paths[i] for i in top]
    np.testing.assert_allclose([h["score"] for h in hits], want[top].numpy(), rtol=1e-4)


def test_a_scorer_of_the_other_embedding_kind_is_named_and_backend_needs_probes(
    trained, tmp_path, capsys
):
    """`--scorer cosine` on meta-embeddings crashed with a traceback; `--backend faiss` without
    probes was accepted (leave-one-out metrics never search with it) even without faiss."""
    from metaemb.core.errors import ScorerError
    from metaemb.core.scoring.choice import choose_scorer

    for name in ("cosine", "euclidean"):
        with pytest.raises(ScorerError, match=rf"holds Gaussian meta-embeddings and scorer "
                           rf"'{name}' accepts embedding: score it with gme"):  # fmt: skip
            choose_scorer(None, name, "search", kind="gme", holder="the collection")
    with pytest.raises(ScorerError, match="holds point embeddings and scorer 'gme' accepts gme"):
        choose_scorer(None, "gme", "search", kind="point", holder="the collection")
    data, run = trained
    out = tmp_path / "c.npz"
    code, _, err = helpers.run_cli(["embed", run, data, "--out", out, "--workers", "0"], capsys)
    assert code == 0, err
    code, _, err = helpers.run_cli(["neighbours", out, "--backend", "exact"], capsys)
    assert code == 2 and "--backend applies to probe files" in " ".join(err.split())


def test_ranking_with_the_default_scorer_names_the_runs_own():
    """A run scoring trials with 'dtw' was ranked by neighbours/identify with cosine, and
    evaluate and identify disagreed without a word (P15 F2)."""
    import warnings

    from metaemb.core.scoring.choice import note_default_scorer

    with pytest.warns(UserWarning, match=r"identify ranks with 'cosine' at its defaults, not "
                      r"with the run's scorer 'dtw' \(its options and fitted state\): it "
                      "scores sequence"):  # fmt: skip
        note_default_scorer("dtw", "point", "identify", "it scores sequence embeddings")
    with pytest.warns(UserWarning, match=r"neighbours ranks with 'gme' at its defaults, not "
                      "with the run's scorer 'plda'"):  # fmt: skip
        note_default_scorer("plda", "gme", "neighbours")
    # a run's cosine has options of its own: when it cannot be had, that is said (R4 F1)
    with pytest.warns(UserWarning, match=r"'cosine' at its defaults, not with the run's scorer "
                      r"'cosine' \(its options and fitted state\): the run is gone"):  # fmt: skip
        note_default_scorer("cosine", "point", "neighbours", "the run is gone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for run_scorer, kind in (("", "point"), (None, "point"), ("cosine", "point"),
                                 ("gme", "gme")):  # fmt: skip
            note_default_scorer(run_scorer, kind, "identify")


def test_an_embeddings_file_given_as_a_model_says_what_it_is(trained, tmp_path, capsys):
    """An .npz showed torch's zip internals and a .pt 'is not a metaemb checkpoint' (H17 F18)."""
    data, run = trained
    for name in ("e.pt", "e.npz"):
        out = tmp_path / name
        assert helpers.run_cli(["embed", run, data, "--out", out, "--workers", "0"])[0] == 0
        code, _, err = helpers.run_cli(["evaluate", out, "--workers", "0"], capsys)
        said = " ".join(err.split())
        assert code == 2 and f"'{out}' is an embeddings file (from `metaemb embed`)" in said, said
        if name == "e.pt":  # it records the checkpoint that made it
            assert "(it was made with '" in said


def test_embed_inputs_takes_one_path_as_a_string(trained):
    """embed_inputs(run, "a/b.png") iterated the string letter by letter: "'/' is a folder"
    (L2 F6)."""
    from metaemb.core.eval.collect import embed_inputs

    data, run = trained
    one = sorted(data.glob("*/*.png"))[0]
    got = embed_inputs(run, str(one), device="cpu", workers=0, root=data)
    assert got.paths == [one.relative_to(data).as_posix()] and got.embeddings.shape[0] == 1
