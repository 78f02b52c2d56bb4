"""Config values are range-checked before any work (issue 13 item 14), and config.toml files
written by earlier versions still load (issue 12: an old run directory still evaluates)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from helpers import run_cli

from metaemb.core.config import from_dict, load_toml, resolve
from metaemb.core.errors import ConfigError

V0 = Path(__file__).parent / "data" / "configs_v0"  # written by metaemb before the contract


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr=-0.1", "'train.lr' must be > 0; got -0.1"),
        ("train.lr=0", "'train.lr' must be > 0"),
        ("train.lr=nan", "'train.lr' must be finite and > 0; got nan"),
        ("data.workers=-1", "'data.workers' must be ≥ 0"),
        ("eval.p_targets=[]", "'eval.p_targets' is empty"),
        ("eval.p_targets=[0.01,1.5]", "holds 1.5"),
        ("train.epochs=0", "'train.epochs' must be ≥ 1; got 0"),
        ("train.epochs=-3", "'train.epochs' must be ≥ 1"),
        ("data.val_fraction=-0.5", "'data.val_fraction' must be a fraction strictly between"),
        ("data.val_fraction=1.0", "'data.val_fraction' must be a fraction"),
        ("train.batch_size=0", "'train.batch_size' must be ≥ 2"),
        ("train.batch_size=1", "'train.batch_size' must be ≥ 2"),
        ("model.dim=0", "'model.dim' must be ≥ 1"),
        ('train.lr="0.1"', "expected a number, got the string '0.1'; write it without quotes"),
        ('train.epochs="3"', "expected an integer, got the string '3'"),
        ("name=../../x", "run name '../../x' is not a plain name"),
        ("train.epochs=99999999999999999999999", "does not fit a 64-bit integer"),
        ("name=a/b", "is not a plain name"),
        ("name=.hidden", "is not a plain name"),
        ("name=-x", "not starting with '.' or '-'"),  # `evaluate -x-1a2b3c4d` read an option
        ("tr\u0430in.epochs=1", "non-ASCII character (U+0430)"),  # a Cyrillic 'а' (H19 F10)
        ('name=""', "is not a plain name"),
    ],
)
def test_out_of_range_values_are_refused_not_clamped(item, message):
    with pytest.raises(ConfigError) as err:
        resolve("face", sets=[item])
    assert message in str(err.value)


def test_a_wrong_choice_names_the_accepted_values():
    with pytest.raises(ConfigError) as err:
        resolve("speaker", sets=["features.fbank.cmn=bogus"])
    assert (
        "'features.fbank.cmn': expected true or false or one of 'mean', 'level', 'none', got "
        in (str(err.value))
    )


def test_unquoted_set_text_still_reads_as_numbers():
    cfg = resolve("face", sets=["train.lr=.05", "eval.p_targets=0.01,0.1", "name=my_run-2.b"])
    assert cfg.train.lr == 0.05 and cfg.eval.p_targets == [0.01, 0.1]
    assert cfg.name == "my_run-2.b"


def test_a_quoted_number_in_a_config_file_is_refused_naming_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = "0.1"\n')
    with pytest.raises(ConfigError, match=r"train\.lr' \(config file '.*c\.toml'\): expected a"):
        resolve("face", config_file=f)


def test_non_utf8_config_file_is_named(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes("# caf\xe9\n[train]\nepochs = 2\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config file '.*latin1\.toml' is not UTF-8"):
        resolve("face", config_file=f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_cli_refuses_a_run_name_outside_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["train", "--modality", "face", "--set", "name=../../x"], capsys, monkeypatch
    )
    assert code == 2 and "is not a plain name" in out + err and "Traceback" not in out + err
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "runs").exists()


# -- configs written before the change -----------------------------------------------------------
def _load(name: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = from_dict(load_toml(V0 / f"{name}.toml"))
    return cfg, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", sorted(p.stem for p in V0.glob("*.toml")))
def test_old_config_toml_still_resolves_and_round_trips(name, tmp_path):
    cfg, _ = _load(name)
    again = tmp_path / "config.toml"
    again.write_text(cfg.to_toml())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file needs no migration
        assert from_dict(load_toml(again)).hash() == cfg.hash()


def test_unchanged_configurations_keep_their_run_hash():
    recorded = json.loads((V0 / "hashes.json").read_text())
    for name in ("face-default", "face-gme"):
        assert _load(name)[0].hash() == recorded[name], name


def test_moved_options_migrate_with_a_message():
    cfg, msgs = _load("speaker-asnorm-plda")
    assert cfg.eval.scorer == "asnorm"
    assert cfg.options("scorer") == {"base": {"name": "plda", "lda_dim": 64}, "top_n": 50}
    assert any("'scorer.lda_dim' is now 'scorer.base.lda_dim'" in m for m in msgs)
    cfg, msgs = _load("speaker-ecapa-fbank")
    # cmn: that run's per-band CMN, pinned because the speaker default later became "level".
    assert cfg.options("features")["fbank"] == {"n_mels": 40, "dither": 1.0, "cmn": True}
    assert cfg.options("backbone") == {"embedding_dim": 256}  # what that run really trained
    # Its scorer: the plain cosine of the time, not today's adapted, WCCN-fitted default.
    assert cfg.options("scorer") == {
        "subtract_mean": False,
        "wccn": False,
        "adapt_mean": False,
        "adapt_scale": False,
    }
    assert resolve("speaker").options("scorer") == {
        "subtract_mean": True,
        "wccn": True,
        "adapt_mean": True,
        "adapt_scale": True,
    }
    assert any("'features.n_mels' is now 'features.fbank.n_mels'" in m for m in msgs)
    cfg, _ = _load("face-distill")
    assert cfg.options("objective") == {"task": {"name": "arcface"}}
    # A default x-vector run saved before input_stats became the default rebuilds without it.
    cfg, _ = _load("speaker-default")
    assert cfg.options("backbone")["input_stats"] is False
    assert resolve("speaker").options("backbone")["input_stats"] is True
    # ... and evaluates without AdaBN, a core field added after it was saved.
    assert cfg.eval.adapt_batchnorm is False
    assert resolve("speaker").eval.adapt_batchnorm is True
    assert resolve("face").eval.adapt_batchnorm is False


def test_a_run_folder_of_an_earlier_hash_scheme_is_found(tmp_path, monkeypatch, capsys):
    """A run whose folder name carries an older hash of this same configuration is pointed out
    (re-running would otherwise start elsewhere with no word)."""
    from metaemb.core.runs import related_runs, run_dir

    cfg = resolve("speaker", sets=["scorer.name=asnorm"])
    old = tmp_path / "speaker" / "run-0123abcd"
    old.mkdir(parents=True)
    (old / "config.toml").write_text((V0 / "speaker-default.toml").read_text())
    assert related_runs(tmp_path, cfg)[0] is None  # another configuration
    cfg = resolve("speaker")
    assert related_runs(tmp_path, cfg)[0] is None  # the default features changed since
    cfg = resolve(  # what that run trained: per-band CMN, plain cosine, no input statistics
        "speaker",  # (and evaluated with: no AdaBN)
        sets=["features.fbank.cmn=true", "backbone.input_stats=false", "eval.adapt_batchnorm=false"]
        + [f"scorer.{k}=false" for k in ("subtract_mean", "wccn", "adapt_mean", "adapt_scale")],
    )
    assert related_runs(tmp_path, cfg)[0] == old
    run_dir(tmp_path, cfg).mkdir(parents=True)
    assert related_runs(tmp_path, cfg)[0] is None  # its own folder exists: resumes there


def test_a_run_of_the_same_configuration_with_other_epochs_is_found(tmp_path):
    """Raising train.epochs of a finished run started a new run from epoch 1 without a word;
    the user thought it resumed (T1 F2)."""
    from metaemb.core.runs import related_runs, run_dir

    four = resolve("face", sets=["train.epochs=4"])
    folder = run_dir(tmp_path, four)
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(four.to_toml())
    six = resolve("face", sets=["train.epochs=6"])
    assert related_runs(tmp_path, six).other_epochs == (folder, 4)
    other = resolve("face", sets=["train.epochs=6", "train.lr=0.01"])
    assert related_runs(tmp_path, other).other_epochs is None  # another configuration


def test_readme_configuration_example_resolves(tmp_path):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "c.toml").write_text(block)
    cfg = resolve("speaker", config_file=tmp_path / "c.toml")
    assert cfg.eval.scorer == "asnorm"
    assert cfg.options("scorer") == {"top_n": 200, "base": {"name": "plda", "lda_dim": 100}}
    assert cfg.options("features")["fbank"] == {"n_mels": 40, "cmn": "level"}


@pytest.mark.slow  # trains a tiny model (~30 s on 2 cores); the fast tests above cover from_dict
def test_an_old_run_directory_still_evaluates(tmp_path, capsys, monkeypatch):
    """A run whose checkpoint and config.toml carry the option layout of an earlier version
    (flat s-norm base options, `scorer.base = "cosine"`) evaluates, with the moved keys named."""
    import torch
    from helpers import demo_faces

    from metaemb.core.config.toml_io import dumps_toml

    data = demo_faces(tmp_path / "faces", 8, 4, image_size=32)
    runs = tmp_path / "runs"
    sets = ["train.epochs=1", "train.batch_size=16", "model.dim=8", "features.image_size=32"]
    sets += ["eval.max_targets=20", "eval.nontargets=20", f"data.cache_dir={tmp_path / 'cache'}"]
    args = ["train", "--modality", "face", "--data", data, "--runs", runs, "--workers", "0"]
    code, _, err = run_cli([*args, *(a for s in sets for a in ("--set", s))], capsys, monkeypatch)
    assert code == 0, err
    [run] = list((runs / "face").iterdir())
    old_layout = {"base": "cosine", "subtract_mean": False, "lda_dim": 16, "top_n": 5}
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        state["config"]["eval"]["scorer"] = "asnorm"
        state["config"]["scorer"] = old_layout
        state.pop("scorer", None)
        torch.save(state, run / name)
    (run / "config.toml").write_text(dumps_toml(state["config"]))
    moved = r"'scorer\.subtract_mean' is now 'scorer\.base\.subtract_mean'"
    with pytest.warns(UserWarning, match=moved):
        code, _, err = run_cli(["evaluate", run, "--workers", "0"], capsys, monkeypatch)
    assert code == 0, err
    metrics = json.loads(next(run.glob("eval-*/metrics.json")).read_text())
    assert metrics["scorer"] == "asnorm" and 0.0 <= metrics["eer"] <= 1.0


def test_a_changed_modality_default_does_not_change_saved_runs(tmp_path):
    """Runs saved before the speaker features' default became cmn="level" were trained with
    per-band CMN: loading them must rebuild that, while new configurations get the new default
    and keep it through a save and load."""
    old, _ = _load("speaker-default")
    assert old.options("features")["fbank"] == {"cmn": True}
    new = resolve("speaker")
    assert new.options("features")["fbank"] == {"cmn": "level"}
    saved = tmp_path / "config.toml"
    saved.write_text(new.to_toml())
    again = from_dict(load_toml(saved))
    assert again.options("features")["fbank"] == {"cmn": "level"} and again.hash() == new.hash()
    chosen = resolve("speaker", sets=["features.fbank.cmn=false"])
    assert from_dict(chosen.to_dict()).options("features")["fbank"] == {"cmn": False}


def test_a_component_chosen_twice_differently_in_one_layer_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[eval]\nscorer = "plda"\n\n[scorer]\nname = "asnorm"\n')
    with pytest.raises(ConfigError, match=r"config file .*c.toml' sets eval.scorer = 'plda' and "
                       r"scorer.name = 'asnorm'"):  # fmt: skip
        resolve("face", path)
    # Across layers the later one wins, as for any key: a --set overrides the file.
    path.write_text('[scorer]\nname = "asnorm"\n')
    assert resolve("face", path, ["eval.scorer=cosine"]).eval.scorer == "cosine"


def test_a_saved_config_without_a_modality_is_refused_not_read_as_the_image_default():
    """The core filled in one built-in modality for a config that named none: with that plugin
    disabled, or for another plugin's run, it chose a modality the run never had (Q1 F8)."""
    with pytest.raises(ConfigError, match="names no modality"):
        from_dict({"name": "x", "train": {"epochs": 1}})


def test_a_fixed_length_tuple_option_takes_that_many_values():
    """`band: tuple[float, float]` took [0.5, 30, 99] and [] without a word (P17 F8); a
    tuple[float, ...] keeps taking any length."""
    from metaemb.core.plugin.options import coerce

    assert coerce([0.5, 40], tuple[float, float], "k") == (0.5, 40.0)
    assert coerce([1, 2, 3], tuple[int, ...], "k") == (1, 2, 3)
    for wrong in ([0.5, 30, 99], [], [0.5]):
        with pytest.raises(ConfigError, match=rf"k: expected 2 values \(tuple\[float, float\]\), "
                           rf"got {len(wrong)}"):  # fmt: skip
            coerce(wrong, tuple[float, float], "k")


@pytest.mark.parametrize("objective", ["contrastive", "triplet", "gme-bxe"])
def test_an_objective_learning_from_pairs_refuses_one_sample_per_identity(objective):
    """sampler.k=1: contrastive trained a whole run at loss 0 without a word, triplet warned
    every batch, gme-bxe failed inside epoch 1 (T1 F4)."""
    from metaemb.core.config.resolution import check_positives

    head = ["model.head=gme"] if objective.startswith("gme") else []
    one = resolve("face", sets=[f"train.objective={objective}", "sampler.k=1", *head])
    with pytest.raises(ConfigError, match=rf"objective '{objective}' learns from samples of one "
                       r"identity in a batch, and sampler.k = 1"):  # fmt: skip
        check_positives(one)  # when training starts: a saved run of it still resolves (R5-9)
    check_positives(resolve("face", sets=[f"train.objective={objective}", "sampler.k=2", *head]))


def test_small_config_mistakes_are_worded_for_what_they_are(tmp_path):
    """T1 F7: a YAML file was 'not valid TOML' at a line and column; one number for a list
    was refused; two objective options took any value."""
    from metaemb.core.plugin.components import build

    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml' is YAML by its name; metaemb reads TOML"):
        resolve("face", config_file=yaml)
    assert resolve("face", sets=["eval.p_targets=0.01"]).eval.p_targets == [0.01]
    with pytest.raises(ConfigError, match=r"objective 'cosface': margin must be below 1"):
        build("objectives", "cosface", {"margin": 1.5})
    with pytest.raises(ConfigError, match=r"collapse_tolerance is a fraction of the margin"):
        build("objectives", "triplet", {"collapse_tolerance": 2.0})


def test_null_for_a_list_option_says_what_it_is():
    """`--set augment.noise.snr_noise=null` was "expected 2 values, got 1: ['null']" (H18 F5)."""
    with pytest.raises(ConfigError, match=r"snr_noise': null is no value here"):
        resolve("speaker", sets=["augment.noise.snr_noise=null"])
