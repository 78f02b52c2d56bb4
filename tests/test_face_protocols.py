"""Face protocols: LFW pairs.txt, the LFW mini dataset, VGGFace2 lists, AgeDB names, fold pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.plugin.interfaces import Trial
from metaemb.core.plugin.manager import registry
from metaemb.plugins.vision.lfw import read_lfw_pairs
from metaemb.plugins.vision.protocols import (
    AgeDBFolder,
    VGGFace2Folder,
    agedb,
    lfw,
    make_fold_pairs,
    make_lfw_mini,
    parse_agedb_name,
    vggface2,
)

PAIRS = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Aaron_Eckhart\t2\t3
Ai_Sugiyama\t1\t2
AJ_Lamas\t1\tZach_Safrin\t1
Aaron_Guiel\t1\tReese_Witherspoon\t3
"""


def test_lfw_pairs_parse_to_trials_in_file_order(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS)
    trials = read_lfw_pairs(tmp_path / "pairs.txt")
    assert len(trials) == 8 and [t.label for t in trials] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert trials[0] == Trial(
        ("Abel_Pacheco/Abel_Pacheco_0001.jpg",), "Abel_Pacheco/Abel_Pacheco_0004.jpg", 1
    )
    assert trials[7] == Trial(
        ("Aaron_Guiel/Aaron_Guiel_0001.jpg",), "Reese_Witherspoon/Reese_Witherspoon_0003.jpg", 0
    )
    # The registered protocol finds pairs.txt in the data folder or beside it.
    (tmp_path / "lfw").mkdir()
    assert registry("protocols").get("lfw")(tmp_path / "lfw", None) == trials
    assert lfw(tmp_path, None) == trials
    assert trials.folds == 2  # from the header: evaluate reports 2-fold accuracy


def test_the_lfw_protocol_warns_about_duplicated_and_self_pairs_as_trial_lists_do(tmp_path):
    """`--protocol lfw` read pairs.txt without the checks `--trials pairs.txt` makes."""
    lines = PAIRS.splitlines()
    lines[2] = lines[1]  # a duplicated matched pair
    lines[5] = "Aaron_Eckhart\t2\t2"  # a file against itself
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning) as seen:
        lfw(tmp_path)
    text = " ".join(str(w.message) for w in seen)
    assert "1 duplicated trial(s)" in text and "against itself" in text


def test_lfw_protocol_refuses_paths_outside_the_data_root(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("1\t1\n..\t1\t2\nA\t1\tB\t1\n")
    with pytest.raises(DataError, match=r"pairs.txt:2: .*escapes the data root"):
        lfw(tmp_path / "lfw")


@pytest.mark.parametrize(
    "text, match",
    [
        ("ten\t2\n", "header"),
        ("1\t2\nA\t1\t2\nB\t1\t2\nC\t1\tD\t1\n", "4 lines"),
        ("1\t1\nA\t1\tB\t2\nC\t1\tD\t1\n", r"pairs.txt:2: expected a matched"),
        ("1\t1\nA\t1\t2\nC\tx\tD\t1\n", r"pairs.txt:3: expected a mismatched"),
    ],
)
def test_bad_pairs_files_name_the_line(tmp_path, text, match):
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_lfw_pairs(tmp_path / "pairs.txt")


def test_fold_pairs_are_identity_disjoint_equal_sized_and_seeded():
    samples = [(f"id{i}/{j}.jpg", f"id{i}") for i in range(25) for j in range(3 + i % 3)]
    trials = make_fold_pairs(samples, folds=5, per_fold=4, seed=1)
    assert len(trials) == 5 * 8
    ident = {p: i for p, i in samples}
    seen: list[set[str]] = []
    for f in range(5):
        chunk = trials[f * 8 : (f + 1) * 8]
        assert [t.label for t in chunk] == [1] * 4 + [0] * 4
        for t in chunk:
            same = ident[t.enroll[0]] == ident[t.test]
            assert same == (t.label == 1) and t.enroll[0] != t.test
        ids = {ident[p] for t in chunk for p in (*t.enroll, t.test)}
        assert all(not (ids & other) for other in seen)
        seen.append(ids)
    assert make_fold_pairs(samples, folds=5, per_fold=4, seed=1) == trials
    assert make_fold_pairs(samples, folds=5, per_fold=4, seed=2) != trials
    with pytest.raises(DataError, match="too few"):
        make_fold_pairs(samples[:10], folds=5)


def test_lfw_mini_dataset_runs_through_the_lfw_protocol(tmp_path):
    pytest.importorskip("metaemb.plugins.vision.synthetic")
    root = make_lfw_mini(tmp_path / "lfw", identities=20, images_per_identity=3, pairs_per_fold=3)
    head = (root / "pairs.txt").read_text().splitlines()[0]
    assert head == "10\t3"
    trials = lfw(root)
    assert len(trials) == 60 and sum(t.label for t in trials) == 30
    for t in trials:
        a, b = t.enroll[0], t.test
        assert (root / a).is_file() and (root / b).is_file()
        assert (a.split("/")[0] == b.split("/")[0]) == (t.label == 1)
        name = a.split("/")[0]
        assert Path(a).name.startswith(name + "_") and Path(a).suffix == ".jpg"
    # landmarks.csv covers every image and the align frontend uses it.
    with open(root / "landmarks.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(rows) == 60 and all((root / r[0]).is_file() for r in rows)
    from metaemb.core.plugin.components import build
    from metaemb.plugins.vision.folder import ImageFolder, read_image

    folder = ImageFolder(root)
    assert folder.num_identities == 20 and len(folder) == 60
    fe = build("frontends", "align", {"crop_size": 64}, root=root, cache_dir=tmp_path / "c")
    assert fe(read_image(root / rows[0][0]), rows[0][0], root).shape == (3, 64, 64)
    with pytest.raises(DataError, match="not empty"):
        make_lfw_mini(root)


def _touch_jpg(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_vggface2_folder_follows_the_split_list(tmp_path):
    base = tmp_path / "vggface2"
    listed = [f"n{i:06d}/{j:04d}_01.jpg" for i in range(1, 21) for j in range(1, 4)]
    for rel in [*listed, "n999999/0001_01.jpg"]:  # one unlisted image is ignored
        _touch_jpg(base / "test" / rel)
    (base / "test_list.txt").write_text("\n".join(listed) + "\n")
    folder = VGGFace2Folder(base, split="test")  # root holding test/
    assert folder.root == base / "test" and len(folder) == 60 and folder.num_identities == 20
    assert VGGFace2Folder(base / "test").root == base / "test"  # list in the parent
    trials = vggface2(base / "test")
    assert len(trials) == 10 * 2 * 6 and {t.label for t in trials} == {0, 1}
    with pytest.raises(ConfigError):
        vggface2(base / "test", base / "x.txt")
    (base / "test_list.txt").write_text("\n".join([*listed, "n000001/0099_01.jpg"]) + "\n")
    with pytest.raises(DataError, match=r"1 image.*missing"):
        VGGFace2Folder(base)


def test_agedb_names_identities_and_age_gap_pairs(tmp_path):
    got = parse_agedb_name("0_MariaCallas_35_f.jpg")
    assert (got.name, got.age) == ("MariaCallas", 35)
    got = parse_agedb_name("12_Jean_Paul_Belmondo_70_m.jpg")
    assert (got.name, got.age) == ("Jean_Paul_Belmondo", 70)
    with pytest.raises(DataError, match="does not follow"):
        parse_agedb_name("MariaCallas.jpg")
    k = 0
    for i in range(20):
        for age in (20, 30, 55, 60):
            _touch_jpg(tmp_path / f"{k}_Person{i}_{age}_m.jpg")
            k += 1
    folder = AgeDBFolder(tmp_path)
    assert folder.num_identities == 20 and len(folder) == 80
    with pytest.warns(UserWarning, match=r"fewer than the 300 of each pairs_per_fold asks for"):
        trials = agedb(tmp_path)
    from metaemb.core.eval.trial_set import protocol_options

    assert protocol_options("agedb", {"pair_seed": 2}) == {
        "min_age_gap": 30, "folds": 10, "pairs_per_fold": 300, "pair_seed": 2,
    }  # fmt: skip
    assert len(trials) > 0
    for t in trials:
        a, b = parse_agedb_name(t.enroll[0]), parse_agedb_name(t.test)
        (na, aa), (nb, ab) = (a.name, a.age), (b.name, b.age)
        if t.label == 1:
            assert na == nb and abs(aa - ab) >= 30
        else:
            assert na != nb
