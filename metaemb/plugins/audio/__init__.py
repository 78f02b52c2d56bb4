"""Built-in audio plugin: audio folders, VAD, Kaldi fbank, x-vector/ECAPA, the speaker modality.

Registered through the same hooks as any third-party plugin; imports happen inside the hooks so
loading the plugin stays cheap.
"""

from __future__ import annotations

from metaemb import hookimpl
from metaemb.core.hookspecs import Register


@hookimpl
def register_sample_folders(register: Register) -> None:
    from metaemb.plugins.audio.folder import AudioFolder
    from metaemb.plugins.audio.kaldi import KaldiDataFolder

    register("audio", AudioFolder, description="<speaker>/…/<utt>.wav|flac|ogg folders (VoxCeleb)")
    register("kaldi", KaldiDataFolder, description="Kaldi data dir: wav.scp, utt2spk, segments")


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
def register_backbones(register: Register) -> None:
    from metaemb.backbones.tdnn import xvector

    register("xvector", xvector, description="x-vector TDNN (Snyder 2018), masked stats pooling")


@hookimpl
def register_demo_data(register: Register) -> None:
    from metaemb.plugins.audio.synthetic import generate_voices

    register("speaker", generate_voices, description="synthetic source-filter voices (16 kHz WAV)")


@hookimpl
def register_modalities(register: Register) -> None:
    from metaemb.core.modality import Modality

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
            defaults={
                "train.epochs": 6,
                "train.batch_size": 64,
                "features.crop_seconds": 2.0,
            },
        ),
        description="speaker verification: energy VAD + fbank + x-vector",
    )
