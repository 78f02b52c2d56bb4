"""Recordings in WebDataset-style tar shards (`xyz.flac` + `xyz.json`/`xyz.txt` naming the
speaker), read without webdataset.

The shard index, selection and reading are the core's (metaemb.core.data.tarshards); members
are decoded with soundfile from memory (wav, flac, ogg/opus, mp3 where libsndfile reads them)
and then treated as audio files are: mono float32 [T] at `sample_rate`, resampled or refused
per `on_rate_mismatch`. The energy VAD's decision cache keys on files, so tar samples are not
cached there (the VAD runs on every read; it is cheap next to decoding).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import soundfile as sf
from torch import Tensor

from metaemb.core.data.tarshards import TarShardFolder
from metaemb.core.errors import DataError
from metaemb.core.plugin.contract import Kind, Opt
from metaemb.core.plugin.interfaces import Sample
from metaemb.plugins.audio.io import (
    ALWAYS_FINITE,
    check_rate_policy,
    check_sample_rate,
    finish_audio,
    read_audio,
)


class AudioTarFolder(TarShardFolder):
    """Recordings of tar shards at `sample_rate`; each needs a label member (.cls, .txt, .json)."""

    extensions: ClassVar[tuple[str, ...]] = (".flac", ".wav", ".ogg", ".opus", ".mp3")
    plain: ClassVar[str] = "audio"  # loose files and plain folders, after training
    what: ClassVar[str] = "recording"
    yields = Kind("waveform", rate=Opt("sample_rate"))

    def __init__(
        self,
        root: str | Path,
        shards: str = "*.tar",
        label: str = "cls,txt,json",
        json_key: str = "identity",
        sample_rate: int = 16000,
        on_rate_mismatch: str = "resample",
        cache_dir: Path | None = None,
        samples: list[Sample] | None = None,
    ) -> None:
        self.sample_rate = check_sample_rate(sample_rate)
        self.on_rate_mismatch = check_rate_policy(on_rate_mismatch)
        super().__init__(root, shards, label, json_key, cache_dir, samples)

    def decode(self, data: bytes, ext: str, where: str) -> Tensor:
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                rate = int(f.samplerate)
                if rate != self.sample_rate and self.on_rate_mismatch == "error":
                    raise DataError(
                        f"audio '{where}' has sample rate {rate} Hz but {self.sample_rate} Hz is "
                        "expected; resample the data or set on_rate_mismatch='resample'."
                    )
                array = f.read(dtype="float32", always_2d=True)
                finite = f.subtype in ALWAYS_FINITE
        except DataError:
            raise
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
            raise DataError(f"cannot read audio '{where}': {exc}") from None
        return finish_audio(array, rate, self.sample_rate, where, finite)

    def decode_file(self, path: Path) -> Tensor:
        return read_audio(path, self.sample_rate, self.on_rate_mismatch)
