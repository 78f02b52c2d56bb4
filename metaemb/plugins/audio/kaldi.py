"""Kaldi data directories (wav.scp, utt2spk, optional spk2utt and segments) as a SampleFolder.

Sample paths are utterance ids, so `load(root / utt)` maps back to a recording (and a segment of
it). Relative paths in wav.scp are looked up against the data directory first, then the current
directory (Kaldi recipes write them relative to the recipe folder). Piped commands (`… |`) and
archive offsets (`foo.ark:123`) are refused: convert such data to audio files once. Utterance ids
become the sample paths: names, or names joined by `/` (WeSpeaker's VoxCeleb keys), never
absolute, `.`, `..` or holding `\\`. The tables are read
as trial lists are (`read_list_text`: UTF-8 with or without a byte-order mark, or UTF-16 with
one). A segment ending up to MAX_OVERSHOOT s past its recording's end is cut to the end, a later
one is a bad sample (Kaldi's extract-segments skips it the same way).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from metaemb.core.errors import DataError, first_few
from metaemb.core.eval.trials import read_list_text
from metaemb.core.plugin.contract import Kind, Opt
from metaemb.core.plugin.interfaces import Sample, SampleFolder
from metaemb.plugins.audio.io import check_rate_policy, check_sample_rate, read_audio

MAX_OVERSHOOT = 0.5  # seconds a segment may end past its recording (extract-segments' default)
ARCHIVE = re.compile(r"\.ark:\d+$")  # "foo.ark:1234": an offset into a Kaldi archive


@dataclass(frozen=True)
class Utterance:
    """Where an utterance's audio lives: a file, a segment of it (end None = to the end)."""

    file: str
    start: float
    end: float | None
    where: str  # "wav.scp:12" or "segments:7", for error messages
    recording: str = ""  # the wav.scp key of the recording


def read_table(
    path: Path, min_fields: int, max_fields: int | None = None
) -> list[tuple[int, list]]:
    """Non-empty lines of a Kaldi table as (line number, fields); DataError on too few/many fields."""
    text = read_list_text(path, "Kaldi file")
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            want = f"{min_fields}" if max_fields == min_fields else f"at least {min_fields}"
            raise DataError(
                f"{path}:{n}: malformed line (expected {want} whitespace-separated fields, "
                f"got {len(fields)}): {line.strip()!r}"
            )
        rows.append((n, fields))
    return rows


def _unique(rows: list[tuple[int, list]], path: Path) -> dict[str, tuple[int, list]]:
    seen: dict[str, tuple[int, list]] = {}
    for n, fields in rows:
        if fields[0] in seen:
            raise DataError(f"{path}:{n}: key '{fields[0]}' repeats line {seen[fields[0]][0]}.")
        seen[fields[0]] = (n, fields)
    return seen


def _read_wav_scp(path: Path) -> dict[str, tuple[str, str]]:
    """recording id → (audio path, 'wav.scp:N')."""
    out = {}
    for key, (n, fields) in _unique(read_table(path, 2), path).items():
        target = " ".join(fields[1:])
        if target.endswith("|") or target.startswith("-"):
            raise DataError(
                f"{path}:{n}: piped command {target!r} is not supported; convert the audio to "
                "wav/flac files once and list their paths."
            )
        if len(fields) > 2:
            # Kaldi allows spaces only in commands; a plain path with spaces is ambiguous.
            raise DataError(f"{path}:{n}: expected 'recording path', got {len(fields)} fields.")
        if ARCHIVE.search(target):
            raise DataError(
                f"{path}:{n}: archive offset {target!r} is not supported; extract the audio to "
                "wav/flac files once (e.g. wav-copy scp:wav.scp ark,scp:…) and list their paths."
            )
        out[key] = (target, f"{path.name}:{n}")
    return out


def _float(value: str, path: Path, n: int, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}:{n}: {what} {value!r} is not a number.") from None
    if not math.isfinite(number):
        raise DataError(
            f"{path}:{n}: bad segment times: {what} {value!r} is not a finite number of seconds."
        )
    return number


def check_utterance_id(utt: str, path: Path, n: int) -> None:
    """An utterance id becomes the sample's path (in embeddings files and trial lists): names
    joined by '/' (WeSpeaker and ESPnet key VoxCeleb utterances 'id10270/5r0dWxy17C8/00001.wav',
    and their trial lists name them so), never one that is absolute, climbs out with '..' or
    holds a backslash."""
    parts = utt.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in utt or "\0" in utt:
        raise DataError(
            f"{path}:{n}: utterance id {utt!r} is not a relative name (it is absolute, holds "
            "'.', '..', an empty part or '\\'); utterance ids name samples: use ids such as "
            "'spk1-utt001' or 'id10270/5r0dWxy17C8/00001.wav'."
        )


def check_speaker_id(spk: str, path: Path, n: int) -> None:
    """A speaker id names an identity: in messages, galleries and the train/validation split
    (where `a/b` would count as one of speaker `a`'s identities), so it is a plain name too."""
    if spk in (".", "..") or "/" in spk or "\\" in spk or "\0" in spk:
        raise DataError(
            f"{path}:{n}: speaker id {spk!r} is not a plain name (it holds '/' or '\\', or is "
            "'.' or '..'); use ids such as 'id10001'."
        )


def _read_segments(path: Path) -> dict[str, tuple[str, float, float | None, str]]:
    """utterance id → (recording id, start s, end s or None, 'segments:N')."""
    out = {}
    for utt, (n, fields) in _unique(read_table(path, 4, 4), path).items():
        start = _float(fields[2], path, n, "start time")
        end = _float(fields[3], path, n, "end time")
        if start < 0 or (end >= 0 and end <= start):
            raise DataError(f"{path}:{n}: bad segment times start={start:g} end={end:g}.")
        out[utt] = (fields[1], start, None if end < 0 else end, f"{path.name}:{n}")
    return out


def read_kaldi_dir(root: Path) -> tuple[list[Sample], dict[str, Utterance]]:
    """Parse a Kaldi data directory into samples (sorted by utterance id) and their audio."""
    for required in ("wav.scp", "utt2spk"):
        if not (root / required).is_file():
            raise DataError(f"Kaldi data directory '{root}' has no '{required}'.")
    recordings = _read_wav_scp(root / "wav.scp")
    utt2spk = {
        u: (n, f[1])
        for u, (n, f) in _unique(read_table(root / "utt2spk", 2, 2), root / "utt2spk").items()
    }
    segments = _read_segments(root / "segments") if (root / "segments").is_file() else None
    utts: dict[str, Utterance] = {}
    for utt, (n, spk) in utt2spk.items():
        check_utterance_id(utt, root / "utt2spk", n)
        check_speaker_id(spk, root / "utt2spk", n)
        if segments is None:
            if utt not in recordings:
                raise DataError(f"{root / 'utt2spk'}:{n}: utterance '{utt}' is not in wav.scp.")
            file, where = recordings[utt]
            utts[utt] = Utterance(file, 0.0, None, where, utt)
            continue
        if utt not in segments:
            raise DataError(f"{root / 'utt2spk'}:{n}: utterance '{utt}' is not in segments.")
        rec, start, end, where = segments[utt]
        if rec not in recordings:
            raise DataError(f"{root}/{where}: recording '{rec}' is not in wav.scp.")
        utts[utt] = Utterance(recordings[rec][0], start, end, where, rec)
    if (root / "spk2utt").is_file():
        _check_spk2utt(root / "spk2utt", {u: s for u, (_, s) in utt2spk.items()})
    if not utts:
        raise DataError(f"Kaldi data directory '{root}' lists no utterances in utt2spk.")
    _warn_unlisted(root, set(segments or recordings) - set(utt2spk))
    samples = [Sample(utt, utt2spk[utt][1], -1) for utt in sorted(utts)]
    return samples, utts


def _warn_unlisted(root: Path, unlisted: set[str]) -> None:
    """Utterances of wav.scp (or segments) that utt2spk leaves out have no speaker and are not
    read; Kaldi's validate_data_dir.sh refuses such a directory and fix_data_dir.sh drops them
    with a count: say how many, so a trial naming one is not blamed on the list."""
    if unlisted:
        import warnings

        table = "segments" if (root / "segments").is_file() else "wav.scp"
        warnings.warn(
            f"{root / table}: {len(unlisted)} utterance(s) not in utt2spk are left out (no "
            f"speaker): {first_few(sorted(unlisted), 3)}; run Kaldi's fix_data_dir.sh, or add "
            "them to utt2spk.",
            stacklevel=3,
        )


def _warn_found_twice(root: Path, files: set[str]) -> None:
    """A relative wav.scp path is read from under the data directory when it is there, else
    from the current directory (Kaldi recipes'): when both hold it, every number depends on
    which, so say so. Each top folder is looked at once; files only under a top folder found in
    both places."""
    cwd = Path.cwd()
    relative = sorted(f for f in files if not Path(f).is_absolute())
    if not relative or cwd.resolve() == root.resolve():
        return
    by_top: dict[str, list[str]] = {}
    for f in relative:
        by_top.setdefault(Path(f).parts[0], []).append(f)
    twice = []
    for top, listed in by_top.items():
        here, there = root / top, cwd / top
        if here.exists() and there.exists() and not here.samefile(there):
            twice += [f for f in listed if (root / f).is_file() and (cwd / f).is_file()]
    if twice:
        import warnings

        warnings.warn(
            f"{root / 'wav.scp'}: {len(twice)} relative path(s) are found both under the data "
            f"directory '{root}' and under the current directory '{cwd}' "
            f"({first_few(twice, 3)}); they are read from under the data directory. Write "
            "absolute paths in wav.scp to choose.",
            stacklevel=3,
        )


def _check_spk2utt(path: Path, utt2spk: dict[str, str]) -> None:
    listed: set[str] = set()
    for spk, (n, fields) in _unique(read_table(path, 2), path).items():
        for utt in fields[1:]:
            if utt2spk.get(utt) != spk:
                raise DataError(
                    f"{path}:{n}: utterance '{utt}' of speaker '{spk}' disagrees with utt2spk "
                    f"({utt2spk.get(utt, 'absent')}); regenerate spk2utt with utt2spk_to_spk2utt.pl."
                )
            listed.add(utt)
    missing = sorted(set(utt2spk) - listed)
    if missing:
        raise DataError(f"{path}: utterances of utt2spk missing from spk2utt: {first_few(missing)}")


class KaldiDataFolder(SampleFolder):
    """A Kaldi data directory as a SampleFolder: utterances from utt2spk, audio from wav.scp
    (cut by `segments` when present), speakers from utt2spk. `load` → float32 mono [T]."""

    what: ClassVar[str] = "utterance"
    yields = Kind("waveform", rate=Opt("sample_rate"))

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        on_rate_mismatch: str = "resample",
    ) -> None:
        self.sample_rate = check_sample_rate(sample_rate)
        self.on_rate_mismatch = check_rate_policy(on_rate_mismatch)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Kaldi data directory '{root}' does not exist.")
        found, self.utterances = read_kaldi_dir(root)
        _warn_found_twice(root, {u.file for u in self.utterances.values()})
        super().__init__(root, found)

    def audio_path(self, file: str) -> Path:
        p = Path(file)
        if p.is_absolute():
            return p
        local = self.root / p
        return local if local.exists() or not p.exists() else p

    def source_of(self, sample: Sample) -> str:
        """The recording file an utterance is read from (resolved), with `#start-end` for a
        segment of it: the same recording enrolled by path is then known as enrolled."""
        u = self.utterances.get(sample.path)
        if u is None:
            return super().source_of(sample)
        file = str(self.audio_path(u.file).resolve())
        if u.start == 0.0 and u.end is None:
            return file
        return f"{file}#{u.start:g}-{'' if u.end is None else f'{u.end:g}'}"

    def load(self, path: Path) -> Tensor:
        path = Path(path)
        utt = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else ""
        if utt not in self.utterances:
            raise DataError(f"utterance '{path}' is not in Kaldi data directory '{self.root}'.")
        u = self.utterances[utt]
        if not Path(u.file).is_absolute() and not self.audio_path(u.file).exists():
            raise DataError(
                f"utterance '{utt}' ({self.root}/{u.where}): wav.scp names the relative path "
                f"'{u.file}', found neither under the data directory '{self.root}' nor under "
                f"the current directory '{Path.cwd()}' (Kaldi recipes write paths relative to "
                "the recipe folder: run from there, or write absolute paths in wav.scp)."
            )
        try:
            return read_audio(
                self.audio_path(u.file),
                self.sample_rate,
                self.on_rate_mismatch,
                u.start,
                u.end,
                max_overshoot=MAX_OVERSHOOT,
            )
        except DataError as exc:
            rec = f", recording '{u.recording}'" if u.recording != utt else ""
            raise DataError(f"utterance '{utt}' ({self.root}/{u.where}{rec}): {exc}") from exc
