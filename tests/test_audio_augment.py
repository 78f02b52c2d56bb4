"""Speech augmentation components: known answers for each, config wiring, and the guarantee that
augmentation runs on training batches only (never when embedding for validation/evaluation)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf
import torch

from metaemb import hookimpl
from metaemb.core.config import from_dict, resolve
from metaemb.core.errors import ConfigError
from metaemb.core.plugin import manager as plugins
from metaemb.core.plugin.components import build
from metaemb.core.plugin.interfaces import Augmentation
from metaemb.plugins.audio.augment import AddNoise, Reverb, Telephone
from metaemb.plugins.audio.augment_sources import simulate_rirs
from metaemb.plugins.audio.augment_spec import SpecAugment, band_mask
from metaemb.plugins.audio.augment_speed import SpeedPerturb, speed_perturb

SR = 16000


def speechlike(n: int, t: int, seed: int = 0) -> torch.Tensor:
    """Amplitude-modulated harmonic signals of different levels (stand-ins for utterances)."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / SR
    f0 = 100 + 150 * torch.rand(n, 1, generator=g)
    x = sum(torch.sin(2 * math.pi * k * f0 * time) / k for k in range(1, 6))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * time + torch.rand(n, 1, generator=g))
    return (x * env * (0.01 + torch.rand(n, 1, generator=g))).float()


def snr_db(clean: torch.Tensor, mixed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = (torch.arange(clean.shape[1])[None] < lengths[:, None]).float()
    ps = (clean.square() * mask).sum(1)
    pn = ((mixed - clean).square() * mask).sum(1)
    return 10 * torch.log10(ps / pn)


def test_builtin_noise_mixes_at_the_requested_snr():
    torch.manual_seed(0)
    x = speechlike(16, 8000)
    lengths = torch.tensor([8000] * 8 + [5000] * 8)
    x = x * (torch.arange(8000)[None] < lengths[:, None])
    labels = torch.arange(16)
    aug = AddNoise(p=1.0, snr_noise=(7.0, 7.0), snr_babble=(7.0, 7.0))
    y, ylen, ylab = aug(x, lengths, labels)
    assert torch.equal(ylen, lengths) and torch.equal(ylab, labels)
    assert torch.all((snr_db(x, y, lengths) - 7.0).abs() < 0.5)
    assert torch.all(y[8:, 5000:] == 0), "padding must stay silent"
    aug = AddNoise(p=1.0, snr_noise=(0.0, 15.0), snr_babble=(13.0, 20.0))
    s = snr_db(x, aug(x, lengths, labels)[0], lengths)
    assert torch.all((s > -0.5) & (s < 20.5))


def test_babble_never_uses_the_same_speaker():
    x = torch.zeros(4, 4000)
    x[0] = speechlike(1, 4000)[0]
    x[1] = speechlike(1, 4000, seed=1)[0]
    labels = torch.tensor([0, 0, 0, 0])
    aug = AddNoise(p=1.0)
    aug.categories = ["babble"]
    y, _, _ = aug(x, None, labels)
    assert torch.equal(y, x), "a batch of one speaker has no babble to add"


def test_musan_folder_noise_at_requested_snr(tmp_path):
    rng = np.random.default_rng(0)
    for cat in ("noise", "music", "speech"):
        (tmp_path / cat / "sub").mkdir(parents=True)
        for i in range(3):
            wave = (0.1 * rng.standard_normal(SR)).astype(np.float32)
            sf.write(tmp_path / cat / "sub" / f"{cat}{i}.wav", wave, SR)
    aug = AddNoise(folder=str(tmp_path), p=1.0, snr_noise=(3, 3), snr_music=(3, 3),
                   snr_babble=(3, 3), bank_size=4, bank_seconds=0.5)  # fmt: skip
    assert aug.categories == ["music", "noise", "speech"]
    x = speechlike(12, 12000)
    lengths = torch.full((12,), 12000)
    y, _, _ = aug(x, lengths, torch.arange(12))
    assert torch.all((snr_db(x, y, lengths) - 3.0).abs() < 0.5)


def test_unit_tap_impulse_response_leaves_the_signal_unchanged(tmp_path):
    rir = np.zeros(800, dtype=np.float32)
    rir[0] = 1.0
    sf.write(tmp_path / "room-rir.wav", rir, SR, subtype="FLOAT")
    aug = Reverb(folder=str(tmp_path), p=1.0)
    x = speechlike(4, 6000)
    y, _, _ = aug(x, torch.full((4,), 6000), torch.arange(4))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


def test_reverb_keeps_power_and_padding():
    aug = Reverb(p=1.0)
    x = speechlike(4, 8000)
    lengths = torch.tensor([8000, 8000, 4000, 4000])
    x = x * (torch.arange(8000)[None] < lengths[:, None])
    y, _, _ = aug(x, lengths, torch.arange(4))
    assert not torch.allclose(y, x)
    assert torch.all(y[2:, 4000:] == 0)
    ratio = y.square().sum(1) / x.square().sum(1)
    torch.testing.assert_close(ratio, torch.ones(4), atol=1e-3, rtol=1e-3)


def test_simulated_room_decays_60_db_in_rt60():
    """Schroeder backward integration of the simulated tail: −60 dB after RT60 seconds."""
    torch.manual_seed(0)
    n, rt60 = 8, 0.5
    h = simulate_rirs(
        n, SR, SR, torch.full((n,), rt60), torch.full((n,), -100.0), torch.device("cpu")
    )
    edc = h[:, 1:].square().flip(1).cumsum(1).flip(1).mean(0)
    edc_db = 10 * torch.log10(edc / edc[0])
    t20 = int(torch.nonzero(edc_db < -20).flatten()[0])  # T20 extrapolated ×3, as in ISO 3382
    assert abs(3 * t20 / SR - rt60) < 0.05


def test_speed_1_1_shortens_by_1_over_1_1_and_raises_pitch():
    t = 16000
    x = torch.sin(2 * math.pi * 1000 * torch.arange(t) / SR)[None]
    y = speed_perturb(x, 1.1)
    assert abs(y.shape[-1] - t / 1.1) <= 1
    spec = torch.fft.rfft(y[0, 1000:-1000]).abs()
    peak_hz = int(spec.argmax()) * SR / (y.shape[-1] - 2000)
    assert abs(peak_hz - 1100) < 5
    assert abs(speed_perturb(x, 0.9).shape[-1] - t / 0.9) <= 1


def test_speed_component_makes_new_identities_per_speaker():
    torch.manual_seed(3)
    aug = SpeedPerturb()
    assert aug.num_classes(10) == 30
    labels = torch.arange(10).repeat_interleave(4)  # P=10 speakers × K=4
    x = speechlike(40, 8000)
    y, lengths, new = aug(x, torch.full((40,), 8000), labels)
    assert torch.equal(new % 10, labels)
    assert all(len(set(new[labels == s].tolist())) == 1 for s in range(10))  # P×K kept
    k = new // 10  # 0: factor 1.0, 1: 0.9, 2: 1.1
    expect = torch.tensor([8000, 8000, math.ceil(8000 / 1.1)])[k]
    assert torch.equal(lengths, expect)
    assert torch.equal(y[k == 0], x[k == 0])
    assert set(k.tolist()) == {0, 1, 2}


def test_spec_augment_masks_cover_the_requested_bands():
    m = band_mask(10, torch.tensor([[2, 7], [0, 0]]), torch.tensor([[3, 1], [0, 4]]))
    assert m[0].nonzero().flatten().tolist() == [2, 3, 4, 7]
    assert m[1].nonzero().flatten().tolist() == [0, 1, 2, 3]
    aug = SpecAugment(p=1.0, freq_masks=2, freq_width=8, time_masks=1, time_width=10)
    x = torch.randn(32, 80, 200) + 5.0
    lengths = torch.full((32,), 150)
    torch.manual_seed(1)
    fmask, tmask = aug.masks(x, lengths)
    for row in range(32):
        assert int(fmask[row].sum()) <= 16 and int(tmask[row].sum()) <= 10
        assert not tmask[row, 150:].any(), "time masks stay inside the valid frames"
    torch.manual_seed(1)
    y, _, _ = aug(x, lengths, torch.zeros(32))
    hit = fmask[:, :, None] | tmask[:, None, :]
    assert torch.all(y[hit] == 0) and torch.equal(y[~hit], x[~hit])
    assert fmask.any() and tmask.any()


def test_spec_augment_time_masks_leave_most_of_a_short_utterance():
    """A time mask covers at most time_max_fraction of its utterance's valid frames: 10-frame
    masks used to blank out utterances of a few frames entirely."""
    aug = SpecAugment(p=1.0, freq_masks=0, time_masks=2, time_width=10, time_max_fraction=0.2)
    lengths = torch.tensor([4, 12, 30, 200])
    torch.manual_seed(0)
    for _ in range(50):
        _, tmask = aug.masks(torch.randn(4, 20, 200), lengths)
        for row, n in enumerate(lengths.tolist()):
            assert int(tmask[row].sum()) <= 2 * int(n * 0.2)
            assert not tmask[row, n:].any()
    assert tmask[3].any()  # long utterances still get the full width
    with pytest.raises(ConfigError, match="time_max_fraction"):
        SpecAugment(time_max_fraction=0.0)


def test_spec_augment_frequency_masks_never_wipe_narrow_inputs():
    """Five pen channels under the default 8-bin mask were often all masked (a zero sample);
    a band now covers at most freq_max_fraction of the bins, which does not bind on 80 bins."""
    aug = SpecAugment(p=1.0, time_masks=0)
    torch.manual_seed(0)
    narrow = torch.stack([aug.masks(torch.randn(64, 5, 50), None)[0] for _ in range(20)])
    assert int(narrow.sum(-1).max()) <= 1  # floor(0.2 * 5) bins at most
    wide = torch.stack([aug.masks(torch.randn(64, 80, 50), None)[0] for _ in range(20)])
    assert int(wide.sum(-1).max()) == 8  # the full freq_width on a filterbank
    with pytest.raises(ConfigError, match="freq_max_fraction"):
        SpecAugment(freq_max_fraction=1.5)


def test_telephone_band_limits():
    t = 16000
    time = torch.arange(t) / SR
    x = (torch.sin(2 * math.pi * 100 * time) + torch.sin(2 * math.pi * 1000 * time)
         + torch.sin(2 * math.pi * 6000 * time))[None] * 0.3  # fmt: skip
    y, _, _ = Telephone(p=1.0, mulaw=False)(x, None, torch.zeros(1))
    spec = torch.fft.rfft(y[0]).abs() / (t / 2)
    assert spec[1000] == pytest.approx(0.3, abs=1e-3)
    assert spec[100] < 1e-3 and spec[6000] < 1e-3
    y, _, _ = Telephone(p=1.0, mulaw=True)(x, None, torch.zeros(1))
    spec = torch.fft.rfft(y[0]).abs() / (t / 2)
    assert spec[1000] == pytest.approx(0.3, abs=0.02)


def test_config_selects_and_validates_augmentations():
    cfg = resolve("speaker", sets=["train.augment=['speed', 'noise']", "augment.noise.p=0.25"])
    assert cfg.train.augment == ["speed", "noise"]
    assert cfg.options("augment") == {"noise": {"p": 0.25}}
    again = from_dict(cfg.to_dict())
    assert again.hash() == cfg.hash() and "[augment.noise]" in cfg.to_toml()
    other = resolve("speaker", sets=["train.augment=['speed', 'noise']", "augment.noise.p=0.5"])
    assert other.hash() != cfg.hash()
    off = resolve("speaker", sets=["train.augment=[]", "augment.noise.p=0.5"])
    assert off.options("augment") == {}
    with pytest.raises(ConfigError, match=r"augment\.noise\.snr"):
        resolve("speaker", sets=["augment.noise.snr=3"])
    with pytest.raises(
        ConfigError, match="augments 'waveform' at stage 'input' but the features 'image'"
    ):
        resolve("face", sets=["train.augment=['noise']"])
    with pytest.raises(Exception, match="unknown augmentation 'nosie'"):
        resolve("speaker", sets=["train.augment=['nosie']"])


def test_options_of_an_augmentation_left_off_are_range_checked_too():
    """Refused now, not when the user switches the augmentation on a week later; its folder is
    not read while it is off."""
    with pytest.raises(ConfigError, match=r"augment\.noise\.p must be a probability"):
        resolve("speaker", sets=["train.augment=[]", "augment.noise.p=5"])
    with pytest.raises(ConfigError, match=r"augment\.reverb\.rt60"):
        resolve("speaker", sets=["augment.reverb.rt60=[0.9, 0.2]"])
    with pytest.warns(
        UserWarning,
        match=r"augment.reverb.folder is set but 'reverb' is not in "
        r"train.augment \(\[\]\), so it is not applied: add it \(--set "
        r"'train.augment=\[\"reverb\"\]'\)",
    ):  # fmt: skip (H17 F12)
        off = resolve("speaker", sets=["augment.reverb.folder=/no/such/rirs"])
    assert off.options("augment") == {}
    # a recipe's [augment.*] tables switched off by the list set after them: no warning (R4 F2)
    recipe = Path(__file__).parents[1] / "examples" / "configs" / "speaker-xvector-plda.toml"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = resolve("speaker", config_file=recipe, sets=["train.augment=[]"])
    assert off.train.augment == [] and off.options("augment") == {}
    # within the --set items their order counts: an option after the list forgot its name in
    # it (D3 F11); an option before the list was switched off by it
    with pytest.warns(UserWarning, match=r"augment.noise.p is set but 'noise' is not in"):
        resolve("speaker", sets=["train.augment=['speed']", "augment.noise.p=0.3"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve("speaker", sets=["augment.noise.p=0.3", "train.augment=['speed']"])


class Spy(Augmentation):
    """Counts its calls and whether it was in training mode."""

    calls: ClassVar[list[bool]] = []

    def forward(self, x, lengths, labels):
        Spy.calls.append(self.training)
        return x, lengths, labels


class SpyPlugin:
    @hookimpl
    def register_augmentations(self, register):
        register("spy", Spy)


def test_augmentation_runs_on_training_batches_only(tmp_path):
    from rich.console import Console

    from metaemb.core.train.engine import Trainer

    data = build("demo_data", "speaker", {"speakers": 8, "utterances_per_speaker": 3,
                 "seconds": 1.0}, out=tmp_path / "voices")  # fmt: skip
    sets = [f'data.root="{data}"', "train.epochs=1", "train.batch_size=6",
            "train.augment=['spy', 'speed', 'specaugment']", "backbone.channels=32",
            "backbone.pool_channels=64", "backbone.embedding_dim=32", "model.dim=16",
            "features.crop_seconds=0.5", "eval.max_targets=20", "eval.nontargets=20"]  # fmt: skip
    Spy.calls = []
    with plugins.plugin_registered(SpyPlugin(), "spy-plugin"):
        cfg = resolve("speaker", sets=sets)
        trainer = Trainer(cfg, runs_root=tmp_path / "runs", device="cpu", workers=0,
                          console=Console(quiet=True))  # fmt: skip
        trainer.run()
    assert trainer.num_classes == 3 * trainer.train_folder.num_identities
    assert trainer.classifier.fc.out_features == trainer.num_classes
    # every training batch, plus the first batch twice more: the check that it replays
    assert len(Spy.calls) == trainer.steps_per_epoch + 2 and all(Spy.calls)


def test_augmentations_run_in_float32_under_bf16_autocast():
    """The training step runs under bf16 autocast on CUDA; the augmentations must not: speed
    perturbation's resampling in bf16 failed there (an index write mixing dtypes), and the
    others would lose precision. CPU autocast reproduces what CUDA does."""
    from metaemb.core.train.augment import build_augmenter

    features = build("features", "fbank", {})
    chain = ["speed", "reverb", "noise", "telephone", "specaugment"]
    augmenter = build_augmenter(chain, {}, features).train()
    augmenter.num_classes(4)
    x = speechlike(4, 16000)
    lengths = torch.tensor([16000, 15000, 12000, 16000])
    labels = torch.tensor([0, 1, 2, 3])

    def run(autocast: bool):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            wave, wl, lab = augmenter.input(x, lengths, labels)
            feats, fl = features(wave, wl)
            return augmenter.features(feats.float(), fl, lab), wave

    (feats, _, lab), wave = run(autocast=True)
    (_, _, ref_lab), ref_wave = run(autocast=False)
    assert wave.dtype == torch.float32 and feats.dtype == torch.float32
    assert torch.equal(wave, ref_wave) and torch.equal(lab, ref_lab)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda v: AddNoise(bank_seconds=v), r"augment\.noise\.bank_seconds"),
        (lambda v: Reverb(max_seconds=v), r"augment\.reverb\.max_seconds"),
    ],
)
@pytest.mark.parametrize("value", [0, -1, 1e9, math.inf, math.nan])
def test_augment_seconds_bounded(make, key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be a number of seconds in \(0, "):
        make(value)


def test_waveform_augmentations_need_the_features_sample_rate():
    """A plugin's features without input_spec()["sample_rate"] used to leave the filters and
    noise banks at a guessed 16 kHz; the telephone band above a low rate's Nyquist frequency
    silenced every input (ECG at 250 Hz)."""
    with pytest.raises(ConfigError, match=r"input_spec\(\) has no 'sample_rate' key \(keys: kind"):
        AddNoise().setup({"kind": "ecg", "fs": 250})
    with pytest.raises(ConfigError, match=r"augment\.telephone passes 300–3400 Hz.*125 Hz"):
        Telephone().setup({"sample_rate": 250})
    Telephone().setup({"sample_rate": 8000})  # the band fits


def test_an_augmentation_failing_on_its_first_batch_is_named_with_the_batch():
    """Noise on a batch that is not [N, T] waveforms (features whose prepare gives a matrix)
    failed inside the first training step, blamed on the objective."""
    from metaemb.core.train.augment import build_augmenter

    features = build("features", "fbank", {})
    augmenter = build_augmenter(["noise"], {"noise": {"p": 1.0}}, features).train()
    augmenter.num_classes(4)
    x = torch.randn(4, 64, 8)
    with pytest.raises(
        ConfigError,
        match=r"augmentation 'noise' \(plugin 'audio'\) failed on its first batch, "
        r"torch.float32 \[4, 64, 8\] \(it accepts 'waveform'\)",
    ):
        augmenter.input(x, None, torch.arange(4))
