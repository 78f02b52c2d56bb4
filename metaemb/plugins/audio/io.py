"""Reading audio files into float32 mono tensors at the model's sample rate.

Everything goes through soundfile (libsndfile: wav, flac, ogg/opus, mp3 from libsndfile 1.1), not
torchaudio's I/O, whose backends have changed between releases. AAC in `.m4a`/`.aac`/`.mp4`
(VoxCeleb2 ships `.m4a`), and mp3/opus where the installed libsndfile cannot, are decoded with
PyAV (FFmpeg in its wheel), the optional extra `metaemb[audio-formats]`. Problems a user can fix (unreadable, empty or all-zero
files, a sample rate the policy refuses) raise DataError naming the file; stereo is mixed down
with a warning; other rates are resampled explicitly (windowed-sinc), never silently.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError, MetaembError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".sph")
PYAV_ONLY = (".m4a", ".aac", ".mp4")  # libsndfile has no AAC decoder
PYAV_FALLBACK = (".mp3", ".opus")  # libsndfile < 1.1 cannot read these
WINDOWED = (".wav", ".flac")  # sample-exact seeking: a window reads what a full read has there
RATE_POLICIES = ("resample", "error")
# libsndfile subtypes that decode integers: their float32 samples are always finite
ALWAYS_FINITE = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW"})
#: torchaudio's "kaiser_best" (as librosa and resampy call it): its default Hann window of 6
#: zero crossings left the images of upsampled 8 kHz audio at about −27 dB above 4 kHz (this
#: one: −52…−61 dB for full-band content, below −70 dB for telephone speech below 3.6 kHz),
#: several nats of artefact in the upper mel bands
RESAMPLE_OPTIONS: dict[str, Any] = {
    "resampling_method": "sinc_interp_kaiser",
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "beta": 14.769656459379492,
}
RESAMPLE_METHOD = (
    "band-limited windowed-sinc interpolation (torchaudio.functional.resample, Kaiser window "
    "β = 14.77, 64 zero crossings, roll-off 0.9476: 'kaiser_best')"
)

_warned_rates: set[tuple[int, int]] = set()
_warn_lock = threading.Lock()


def check_rate_policy(on_rate_mismatch: str) -> str:
    """Validate the sample-rate policy option (a ConfigError names the allowed values)."""
    if on_rate_mismatch not in RATE_POLICIES:
        raise ConfigError(
            f"on_rate_mismatch must be one of {', '.join(RATE_POLICIES)}; got '{on_rate_mismatch}'."
        )
    return on_rate_mismatch


def check_sample_rate(sample_rate: int) -> int:
    """A folder's sample rate in Hz: speech is sampled at 8–48 kHz (ultrasound up to 384 kHz);
    a zero or negative rate failed on the first file read, blaming the file."""
    if not 1000 <= int(sample_rate) <= 384000:
        raise ConfigError(
            f"folder.sample_rate must be a rate in Hz from 1000 to 384000 (16000 for the "
            f"field's speaker models); got {sample_rate}."
        )
    return int(sample_rate)


def torchaudio_functional() -> ModuleType:
    """`torchaudio.functional`, or a one-paragraph error when torchaudio is installed for
    another torch (its compiled library then fails to load with an OSError)."""
    try:
        return importlib.import_module("torchaudio.functional")
    except (ImportError, OSError) as exc:
        import torch

        version = torch.__version__.split("+")[0]
        raise MetaembError(
            f"torchaudio cannot be loaded with torch {torch.__version__} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); resampling "
            "audio of another sample rate and speed perturbation need it. Install the torchaudio "
            f"built for this torch: pip install 'torchaudio=={version}'."
        ) from None


def resample(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample a [T] waveform with band-limited windowed-sinc interpolation (see RESAMPLE_METHOD)."""
    if orig_rate == new_rate:
        return wave
    AF = torchaudio_functional()
    return AF.resample(wave, orig_rate, new_rate, **RESAMPLE_OPTIONS)


def _warn_resample_once(path: Path, orig_rate: int, new_rate: int) -> None:
    with _warn_lock:
        if (orig_rate, new_rate) in _warned_rates:
            return
        _warned_rates.add((orig_rate, new_rate))
    warnings.warn(
        f"audio at {orig_rate} Hz (first: '{path}') is resampled to {new_rate} Hz on every read "
        f"with {RESAMPLE_METHOD}. Convert the data once to {new_rate} Hz to skip this cost, or set "
        "on_rate_mismatch='error' to refuse other rates.",
        stacklevel=3,
    )


_warned_channels: set[int] = set()


def _warn_mixdown_once(path: Path, channels: int) -> None:
    """Once per channel count (and process): a stereo corpus would print a line per file."""
    with _warn_lock:
        if channels in _warned_channels:
            return
        _warned_channels.add(channels)
    warnings.warn(
        f"audio file '{path}' has {channels} channels; mixing down to mono (channel mean). "
        f"Further {channels}-channel files are mixed down the same way without a word.",
        stacklevel=4,
    )


MIN_RATE = 1000  # Hz: no speech fits below this; a header claiming less is damaged
# Magic bytes → (what the content is, the suffix it should have); see `_content_hint`.
MAGIC = (
    (b"RIFF", "WAV", ".wav"),
    (b"RIFX", "WAV", ".wav"),
    (b"RF64", "WAV", ".wav"),
    (b"fLaC", "FLAC", ".flac"),
    (b"OggS", "Ogg", ".ogg"),
    (b"ID3", "MP3", ".mp3"),
)


def segment_span(
    path: Path,
    rate: int,
    frames: int,
    start: float,
    end: float | None,
    max_overshoot: float | None,
) -> tuple[int, int]:
    """Frames [first, last) of the segment [start, end) s of a recording of `frames` frames. With
    `max_overshoot` (seconds), as Kaldi's extract-segments: an end past the recording's end by at
    most that much is cut to the end, a later end (or a start at or past the end) is a DataError."""
    first = round(start * rate)
    if end is None or end < 0:
        return first, frames
    if max_overshoot is not None:
        length = frames / rate
        if first >= frames or end > length + max_overshoot:
            late = "starts" if first >= frames else f"ends {end - length:.3f} s"
            raise DataError(
                f"segment [{start:g} s, {end:g} s) {late} past the end of '{path}', which lasts "
                f"{length:.3f} s (Kaldi's extract-segments tolerates {max_overshoot:g} s): is the "
                "segments file in another unit, or written for another recording? (with "
                "on_bad_sample='skip' it is skipped)"
            )
    return first, min(round(end * rate), frames)


def _content_hint(path: Path) -> str:
    """For a file libsndfile cannot open: what its first bytes say it holds, when that differs
    from its suffix, and how to read it ("" when nothing useful can be said)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return ""
    kind = next(((k, s) for magic, k, s in MAGIC if head.startswith(magic)), None)
    if kind is None and head[4:8] == b"ftyp":
        kind = ("MP4/M4A (AAC)", ".m4a")
    elif kind is None and len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        kind = ("AAC (ADTS)", ".aac")
    elif kind is None and len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        kind = ("MP3", ".mp3")
    suffix = path.suffix.lower()
    if head.startswith(b"NIST_1A"):  # SPHERE: libsndfile reads it unless shorten-compressed
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if b"shorten" in f.read(1024):
                return (" It is shorten-compressed NIST SPHERE, which libsndfile cannot decode: "
                        "convert it first (sph2pipe -f wav x.sph x.wav).")  # fmt: skip
        return ""
    if kind is None:
        named = {".wav": "WAV", ".flac": "FLAC"}.get(suffix)
        return f" The content is not {named} (its first bytes are {head[:8]!r})." if named else ""
    what, right = kind
    if right == suffix:
        return ""
    hint = (
        f" The content is not {suffix.lstrip('.').upper()} but {what}: give it the suffix '{right}'"
    )
    if right in PYAV_ONLY + PYAV_FALLBACK:
        try:
            importlib.import_module("av")
            hint += " (PyAV, installed, decodes it)"
        except ImportError:
            hint += " and install PyAV to decode it: pip install 'metaemb[audio-formats]'"
    return hint + ", or convert it to WAV/FLAC."


def read_audio(
    path: str | Path,
    sample_rate: int = 16000,
    on_rate_mismatch: str = "resample",
    start: float = 0.0,
    end: float | None = None,
    max_overshoot: float | None = None,
) -> Tensor:
    """Read `path` (optionally the segment [start, end) in seconds) → float32 mono [T] in [−1, 1].

    Stereo is averaged to mono with a warning; a different sample rate is resampled (windowed-sinc,
    warned once per rate pair) or refused (policy "error"). Unreadable, missing, empty, all-zero
    and non-finite (NaN/Inf) audio, and a header claiming under MIN_RATE Hz, raise DataError
    naming the file. An end past the recording's end is cut to it; with `max_overshoot`, only up
    to that many seconds (see `segment_span`).
    """
    path = path if isinstance(path, Path) else Path(path)
    check_rate_policy(on_rate_mismatch)
    where = f"'{path}'" if start == 0.0 and end is None else f"'{path}' [{start:g} s, {end} s)"
    if path.suffix.lower() in PYAV_ONLY:
        data, rate = _read_pyav(path, sample_rate, on_rate_mismatch, start, end, max_overshoot)
        return _finish(data, rate, sample_rate, path, where)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            check_header_rate(rate, path)
            if rate != sample_rate and on_rate_mismatch == "error":
                raise DataError(
                    f"audio file '{path}' has sample rate {rate} Hz but {sample_rate} Hz is expected; "
                    "resample the data or set on_rate_mismatch='resample'."
                )
            first, last = segment_span(path, rate, f.frames, start, end, max_overshoot)
            if first > 0:
                f.seek(min(first, f.frames))
            try:
                data = read_float32(f, max(0, last - first))
            except MemoryError:  # a day-long recording: named, and skippable like a bad file
                hours = (last - first) / max(rate, 1) / 3600
                raise DataError(
                    f"audio file '{path}' ({hours:.1f} h at {rate} Hz) is too long to decode in "
                    "the memory left: cut it into shorter files, or leave it out with "
                    "--on-bad-sample skip."
                ) from None
            finite = f.subtype in ALWAYS_FINITE
    except DataError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        if path.suffix.lower() in PYAV_FALLBACK and path.is_file():
            data, rate = _read_pyav(path, sample_rate, on_rate_mismatch, start, end, max_overshoot)
            return _finish(data, rate, sample_rate, path, where)
        if not path.exists():
            raise DataError(f"audio file '{path}' does not exist.") from None
        if path.is_dir():
            raise DataError(f"audio file '{path}' is a folder, not a file.") from None
        if path.stat().st_size == 0:  # a failed copy or recording
            raise DataError(f"audio file '{path}' is empty (0 bytes).") from None
        reason = str(exc).rstrip(".")
        raise DataError(f"cannot read audio file '{path}': {reason}.{_content_hint(path)}") from exc
    return _finish(data, rate, sample_rate, path, where, finite)


def read_float32(f: sf.SoundFile, frames: int) -> np.ndarray:
    """`f.read(frames, dtype="float32", always_2d=True)`; 16-bit PCM is read as int16 and scaled
    by 2^-15 in numpy, the same values (exact in float32) 2–3× faster than libsndfile's own
    conversion (about 75 against 190 µs for 2 s)."""
    if f.subtype == "PCM_16":
        ints = f.read(frames, dtype="int16", always_2d=True)
        return np.multiply(ints, np.float32(2**-15), dtype=np.float32)
    return f.read(frames, dtype="float32", always_2d=True)


def read_window(
    path: str | Path, sample_rate: int, choose: Callable[[int], tuple[int, int] | None]
) -> Tensor | None:
    """Samples [start, stop) of a mono WAV/FLAC file at `sample_rate`, where (start, stop) =
    `choose(number of frames)`, without decoding the rest of the file (a training crop).

    None, with nothing read, when the file is of another kind (rate, channels, a format whose
    seeking is not sample-exact) or `choose` declines: the caller then reads it whole with
    `read_audio`. The samples equal read_audio's at those positions.
    """
    path = path if isinstance(path, Path) else Path(path)
    if path.suffix.lower() not in WINDOWED:
        return None
    window = None
    try:
        with sf.SoundFile(str(path)) as f:
            if f.samplerate != sample_rate or f.channels != 1:
                return None
            window = choose(f.frames)
            if window is None:
                return None
            f.seek(window[0])
            data = read_float32(f, window[1] - window[0])[:, 0]
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        if window is None:
            return None  # read_audio names the problem
        raise DataError(f"cannot read audio file '{path}' at samples {window}: {exc}") from exc
    if data.shape[0] != window[1] - window[0]:
        raise DataError(f"audio file '{path}' ended before sample {window[1]} (truncated?).")
    return torch.from_numpy(data)


def check_header_rate(rate: int, path: Path | str) -> None:
    """DataError for a sample rate no audio is recorded at (a damaged header): resampling it
    would turn a few samples into seconds of noise."""
    if rate < MIN_RATE:
        raise DataError(
            f"audio file '{path}' claims a sample rate of {rate} Hz, below {MIN_RATE} Hz, where no "
            "speech fits: its header is damaged. Re-encode or remove the file (with "
            "on_bad_sample='skip' it is skipped)."
        )


def _read_pyav(
    path: Path,
    sample_rate: int,
    on_rate_mismatch: str,
    start: float,
    end: float | None,
    max_overshoot: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode with PyAV → ([T, channels] float32, rate); [start, end) in seconds."""
    from metaemb.core.optional import require

    av = require("av", f"reading '{path}' ({path.suffix} audio)", error=DataError)
    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                raise DataError(f"'{path}' has no audio stream.")
            stream = streams[0]
            rate = int(stream.codec_context.sample_rate)
            check_header_rate(rate, path)
            if rate != sample_rate and on_rate_mismatch == "error":
                raise DataError(
                    f"audio file '{path}' has sample rate {rate} Hz but {sample_rate} Hz is "
                    "expected; resample the data or set on_rate_mismatch='resample'."
                )
            to_float = av.AudioResampler(format="fltp")  # planar float, same layout and rate
            chunks = [
                out.to_ndarray()
                for frame in container.decode(stream)
                for out in to_float.resample(frame)
            ]
            chunks += [out.to_ndarray() for out in to_float.resample(None)]
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode audio file '{path}': {exc}") from exc
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), rate
    data = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)  # [T, channels]
    first, last = segment_span(path, rate, data.shape[0], start, end, max_overshoot)
    return data[first:last], rate


MIN_SECONDS = 0.025  # one Kaldi analysis frame: shorter audio yields no feature frame
_RANGE_WARNED: list[bool] = []


def _warn_out_of_range_once(data: np.ndarray, path: Path) -> None:
    """Float audio is expected in [−1, 1]; a peak far beyond says it was written on another scale
    (often int16's ±32768). Read as is: level-normalised features do not mind, VAD may."""
    if _RANGE_WARNED:
        return
    peak = float(np.abs(data).max())
    if peak > 2.0:
        _RANGE_WARNED.append(True)
        warnings.warn(
            f"audio file '{path}' holds float samples up to {peak:g}, far outside [-1, 1] "
            "(written on another scale, such as int16's?); reading it as is. Further files "
            "like it are not reported.",
            stacklevel=3,
        )


def _finish(
    data: np.ndarray, rate: int, sample_rate: int, path: Path, where: str, finite: bool = False
) -> Tensor:
    """[T, channels] float32 at `rate` → mono [T] at `sample_rate`, refusing empty/silent audio
    (and NaN/Inf unless `finite`: integer PCM cannot hold them, so its check is skipped)."""
    check_header_rate(rate, path)
    if data.shape[0] == 0:
        raise DataError(f"audio {where} is empty (0 samples).")
    ok = None if finite else np.isfinite(data)
    if ok is not None and not ok.all():
        bad = int(np.argmin(ok.all(axis=1)))
        raise DataError(
            f"audio {where} holds NaN or infinite samples ({int((~ok).sum())} values, the "
            f"first at sample {bad}); a float WAV/FLAC with damaged data. Re-encode or remove the "
            "file (with on_bad_sample='skip' it is skipped)."
        )
    if data.shape[1] > 1:
        _warn_mixdown_once(path, data.shape[1])
        mixed = data.mean(axis=1, keepdims=True)
        level = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
        if level > 0 and float(np.sqrt(np.mean(np.square(mixed, dtype=np.float64)))) < 0.05 * level:
            raise DataError(
                f"audio {where} has {data.shape[1]} channels that cancel when mixed down to mono "
                "(more than 26 dB lost: in opposite phase): keep one channel (e.g. `sox in.wav "
                "out.wav remix 1`)."
            )
        data = mixed
    if not (data[:4096].any() or data.any()):  # speech is rarely zero for 4096 samples
        raise DataError(f"audio {where} is silent (all samples are zero).")
    if data.shape[0] < MIN_SECONDS * rate:
        raise DataError(
            f"audio {where} lasts {1000 * data.shape[0] / rate:.1f} ms, less than one "
            f"{1000 * MIN_SECONDS:g} ms analysis frame, so no feature can be computed from it "
            "(with on_bad_sample='skip' it is skipped)."
        )
    if not finite:
        _warn_out_of_range_once(data, path)
    wave = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if rate != sample_rate:
        _warn_resample_once(path, rate, sample_rate)
        wave = resample(wave, rate, sample_rate)
    return wave


def finish_audio(
    data: np.ndarray, rate: int, sample_rate: int, where: str, finite: bool = False
) -> Tensor:
    """The checks and conversion of `read_audio` for audio decoded from another container (a tar
    shard member): [T, channels] float32 at `rate` → mono [T] at `sample_rate`; `where` names it."""
    return _finish(data, rate, sample_rate, Path(where), f"'{where}'", finite)
