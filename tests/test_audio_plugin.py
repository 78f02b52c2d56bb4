"""The audio plugin's registrations and the speaker modality, built the way the engine builds them."""

from __future__ import annotations

from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.components import build
from metaemb.core.plugin.options import options_of
from metaemb.plugins.audio.features import AudioFeatures
from metaemb.plugins.audio.vad import EnergyVAD


def test_components_are_registered_by_the_audio_plugin():
    for kind, name in [
        ("sample_folders", "audio"),
        ("sample_folders", "kaldi"),
        ("frontends", "energy"),
        ("frontends", "silero"),
        ("features", "fbank"),
        ("backbones", "xvector"),
        ("backbones", "ecapa512"),
        ("backbones", "ecapa1024"),
        ("demo_data", "speaker"),
        ("modalities", "speaker"),
    ]:
        assert plugins.registry(kind).entry(name).plugin == "audio", (kind, name)


def test_speaker_modality_names_registered_components():
    mod = plugins.get("modalities", "speaker")
    assert (mod.sample_folder, mod.frontend, mod.features, mod.backbone, mod.demo_data) == (
        "audio",
        "energy",
        "fbank",
        "xvector",
        "speaker",
    )
    assert mod.baseline_name == "mean fbank"
    for key in mod.defaults:
        section, option = key.split(".", 1)
        if section == "features":
            assert option in options_of(AudioFeatures)


def test_build_with_engine_context(tmp_path):
    vad = build("frontends", "energy", {"context": 1}, root=tmp_path, cache_dir=tmp_path)
    assert isinstance(vad, EnergyVAD) and vad.cache.dir == tmp_path / "vad"
    feats = build("features", "fbank", {"fbank": {"n_mels": 40}})
    assert feats.out_channels == 40


def test_ecapa_sizes_and_typed_options():
    small = build("backbones", "ecapa512", {}, in_channels=80)
    large = build("backbones", "ecapa1024", {}, in_channels=80)
    n_small = sum(p.numel() for p in small.parameters())
    n_large = sum(p.numel() for p in large.parameters())
    assert 5.5e6 < n_small < 7.0e6 and 13.5e6 < n_large < 16e6
    assert options_of(plugins.get("backbones", "ecapa512"))["scale"].type is int
