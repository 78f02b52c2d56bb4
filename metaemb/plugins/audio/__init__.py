"""Built-in audio plugin: audio folders, VAD, Kaldi fbank, x-vector/ECAPA, the speaker modality.

Registered through the same hooks as any third-party plugin; imports happen inside the hooks so
loading the plugin stays cheap.
"""

from __future__ import annotations

from metaemb import hookimpl
from metaemb.core.plugin.hookspecs import Register


@hookimpl
def register_sample_folders(register: Register) -> None:
    from metaemb.plugins.audio.folder import AudioFolder
    from metaemb.plugins.audio.kaldi import KaldiDataFolder

    register("audio", AudioFolder, description="<speaker>/…/<utt>.wav|flac|ogg folders (VoxCeleb)")
    register("kaldi", KaldiDataFolder, description="Kaldi data dir: wav.scp, utt2spk, segments")
    from metaemb.plugins.audio.tarshards import AudioTarFolder

    register(
        "audio-tar",
        AudioTarFolder,
        description="WebDataset-style tar shards: xyz.flac + xyz.json/.txt (random access, indexed)",
    )


@hookimpl
def register_frontends(register: Register) -> None:
    from metaemb.plugins.audio.vad import EnergyVAD, SileroVAD

    register("energy", EnergyVAD, description="Kaldi energy VAD: keep speech frames (cached)")
    register(
        "silero", SileroVAD, description="Silero VAD speech segments (pip install metaemb[vad])"
    )


@hookimpl
def register_features(register: Register) -> None:
    from metaemb.plugins.audio.features import AudioFeatures

    register(
        "fbank", AudioFeatures, description="80-dim Kaldi log-mel fbank + CMN, batched on device"
    )


@hookimpl
def register_augmentations(register: Register) -> None:
    from metaemb.plugins.audio.augment import AddNoise, Reverb, Telephone
    from metaemb.plugins.audio.augment_spec import SpecAugment
    from metaemb.plugins.audio.augment_speed import SpeedPerturb

    register("noise", AddNoise, description="additive noise at sampled SNRs (MUSAN or built-in)")
    register("reverb", Reverb, description="room reverberation (RIR folder or simulated rooms)")
    register("speed", SpeedPerturb, description="speed perturbation 0.9/1.0/1.1, new identities")
    register("telephone", Telephone, description="telephone band 300–3400 Hz + μ-law coding")
    register("specaugment", SpecAugment, description="SpecAugment time/frequency masking")


@hookimpl
def register_backbones(register: Register) -> None:
    from metaemb.plugins.audio.backbones.tdnn import xvector

    register("xvector", xvector, description="x-vector TDNN (Snyder 2018), masked stats pooling")
    from metaemb.core.plugin.components import preset
    from metaemb.plugins.audio.backbones.ecapa import ECAPATDNN

    # Presets of one class: their options are ECAPATDNN's own, never restated here.
    ecapa512 = preset(ECAPATDNN, "ECAPA-TDNN with C = 512 (~6.2 M parameters).", channels=512)
    ecapa1024 = preset(ECAPATDNN, "ECAPA-TDNN with C = 1024 (~14.7 M parameters).", channels=1024)
    register("ecapa512", ecapa512, description="ECAPA-TDNN, C = 512, 192-dim output")
    register("ecapa1024", ecapa1024, description="ECAPA-TDNN, C = 1024, 192-dim output")


@hookimpl
def register_export_adapters(register: Register) -> None:
    from metaemb.plugins.audio.export import FbankExport

    register("kaldi_fbank", FbankExport, description="waveforms + lengths, Kaldi fbank in-graph")


@hookimpl
def register_trial_formats(register: Register) -> None:
    from metaemb.plugins.audio.trial_lists import CnCelebTrials, KaldiTrials, VoxCelebList

    register("voxceleb", VoxCelebList, description="'label enroll test' (2 columns: unlabelled)")
    register("kaldi", KaldiTrials, description="'enroll test target|nontarget'")
    register("cnceleb", CnCelebTrials, description="CN-Celeb's 'enroll test 1|0'")


@hookimpl
def register_protocols(register: Register) -> None:
    from metaemb.plugins.audio.trial_lists import (
        cnceleb_protocol,
        kaldi_protocol,
        voxceleb_protocol,
    )

    register("voxceleb", voxceleb_protocol, description="VoxCeleb 'label enroll test' list")
    register("kaldi", kaldi_protocol, description="Kaldi 'enroll test target|nontarget'")
    register(
        "cnceleb", cnceleb_protocol, description="CN-Celeb eval: lists/trials.lst + enroll.lst"
    )


@hookimpl
def register_demo_data(register: Register) -> None:
    from metaemb.plugins.audio.synthetic import generate_voices

    register("speaker", generate_voices, description="synthetic source-filter voices (16 kHz WAV)")


@hookimpl
def register_modalities(register: Register) -> None:
    from metaemb.core.plugin.modality import Modality

    register(
        "speaker",
        Modality(
            name="speaker",
            description="speaker verification from 16 kHz speech (VoxCeleb-style folders)",
            sample_folder="audio",
            frontend="energy",
            features="fbank",
            backbone="xvector",
            demo_data="speaker",
            baseline_name="mean fbank",
            # Sized for the demo on 2 CPU cores: a narrower x-vector (same layer table, 256/768
            # channels) trains to < half the mean-fbank EER in minutes; on real data use
            # --set backbone.channels=512 --set backbone.pool_channels=1500 (the paper's sizes).
            # input_stats: the fbank's own mean ‖ std joins the pooled statistics, so the
            # long-term spectrum reaches the embedding directly (docs/speaker.md, transfer).
            options={
                "backbone": {
                    "xvector": {
                        "channels": 256,
                        "pool_channels": 768,
                        "embedding_dim": 256,
                        "input_stats": True,
                    }
                },
                # cmn="level" removes the gain but keeps the long-term spectral shape, the cue
                # that carries over from synthetic to real voices (docs/speaker.md, transfer).
                "features": {"fbank": {"crop_seconds": 2.0, "fbank": {"cmn": "level"}}},
                # Cosine after within-class normalisation (fitted on the training speakers),
                # centred and scaled on the data being scored: a new recording setup or
                # population shifts every embedding alike (docs/speaker.md, transfer).
                "scorer": {
                    "cosine": {
                        "subtract_mean": True,
                        "wccn": True,
                        "adapt_mean": True,
                        "adapt_scale": True,
                    }
                },
            },
            former_options={  # what runs saved before a default changed were trained with
                "backbone": {"xvector": {"input_stats": False}},
                "features": {"fbank": {"fbank": {"cmn": True}}},  # before cmn="level"
                "scorer": {
                    "cosine": {
                        "subtract_mean": False,
                        "wccn": False,
                        "adapt_mean": False,
                        "adapt_scale": False,
                    }
                },
            },
            defaults={
                "model.dim": 128,
                "train.epochs": 6,
                "train.batch_size": 64,
                "train.optimizer": "adamw",
                "train.lr": 2e-3,
                "train.weight_decay": 1e-4,
                "train.warmup_epochs": 1.0,
                # evaluate re-estimates the BatchNorm statistics on the scored files (AdaBN):
                # a new recording setup shifts every layer's inputs (docs/speaker.md, transfer).
                "eval.adapt_batchnorm": True,
            },
        ),
        description="speaker verification: energy VAD + fbank + x-vector",
    )
