"""AudioFolder: `<speaker>/…/<utt>.{wav,flac,ogg}` (VoxCeleb's `<spk>/<session>/<utt>.wav` as-is)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.plugin.contract import Kind, Opt
from metaemb.core.plugin.interfaces import Sample, SampleFolder
from metaemb.plugins.audio.io import (
    AUDIO_EXTENSIONS,
    check_rate_policy,
    check_sample_rate,
    read_audio,
    read_window,
)


class AudioFolder(SampleFolder):
    """Speaker folders of audio files; the speaker is the first path component under `root`.

    `load` returns a float32 mono waveform [T] at `sample_rate`; files at other rates are resampled
    (windowed-sinc) or refused, per `on_rate_mismatch` ("resample" or "error").
    """

    extensions: ClassVar[tuple[str, ...]] = AUDIO_EXTENSIONS
    what: ClassVar[str] = "recording"
    yields = Kind("waveform", rate=Opt("sample_rate"))
    hash_neutral: ClassVar[dict[str, None]] = {"samples": None}  # runs from before it took them

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        on_rate_mismatch: str = "resample",
        samples: Sequence[Sample] | None = None,
    ) -> None:
        self.sample_rate = check_sample_rate(sample_rate)
        self.on_rate_mismatch = check_rate_policy(on_rate_mismatch)
        super().__init__(root, samples)

    def load(self, path: Path) -> Tensor:
        return read_audio(path, self.sample_rate, self.on_rate_mismatch)

    def load_window(
        self, path: Path, choose: Callable[[int], tuple[int, int] | None]
    ) -> Tensor | None:
        """A window of the file chosen from its length (see `read_window`), or None."""
        return read_window(path, self.sample_rate, choose)
