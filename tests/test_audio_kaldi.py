"""Kaldi data directories: plain and segmented recordings, consistency checks, malformed lines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from metaemb.core.errors import DataError
from metaemb.plugins.audio.kaldi import KaldiDataFolder


def ramp(n: int) -> np.ndarray:
    return ((np.arange(n) % 1000) / 1000.0 - 0.5).astype(np.float32)


def write(dirpath, name, lines):
    (dirpath / name).write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def plain(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name, n in [("a1", 3200), ("a2", 4800), ("b1", 1600)]:
        sf.write(audio / f"{name}.wav", ramp(n), 16000, subtype="FLOAT")
    data = tmp_path / "data"
    data.mkdir()
    write(
        data,
        "wav.scp",
        [f"spkA-u1 {audio}/a1.wav", "spkA-u2 ../audio/a2.wav", f"spkB-u1 {audio}/b1.wav"],
    )
    write(data, "utt2spk", ["spkA-u1 spkA", "spkA-u2 spkA", "spkB-u1 spkB"])
    write(data, "spk2utt", ["spkA spkA-u1 spkA-u2", "spkB spkB-u1"])
    return data


def test_plain_directory(plain):
    folder = KaldiDataFolder(root=plain)
    assert [s.path for s in folder.samples] == ["spkA-u1", "spkA-u2", "spkB-u1"]
    assert folder.identities == ["spkA", "spkB"] and folder.labels == [0, 0, 1]
    wave, label = folder[1]  # relative path, resolved against the data directory
    np.testing.assert_array_equal(wave.numpy(), ramp(4800))
    assert label == 0
    sub = folder.subset(["spkB"])
    assert len(sub) == 1 and sub[0][0].numel() == 1600 and sub.labels == [0]


def test_segments(tmp_path):
    sf.write(tmp_path / "rec.wav", ramp(16000), 16000, subtype="FLOAT")
    write(tmp_path, "wav.scp", [f"rec1 {tmp_path}/rec.wav"])
    write(tmp_path, "segments", ["u1 rec1 0.10 0.25", "u2 rec1 0.5 -1"])
    write(tmp_path, "utt2spk", ["u1 s1", "u2 s2"])
    folder = KaldiDataFolder(root=tmp_path)
    np.testing.assert_array_equal(folder[0][0].numpy(), ramp(16000)[1600:4000])
    np.testing.assert_array_equal(folder[1][0].numpy(), ramp(16000)[8000:])
    assert folder.labels == [0, 1]


@pytest.mark.parametrize(
    ("name", "lines", "pattern"),
    [
        ("utt2spk", ["spkA-u1 spkA", "spkA-u2", "spkB-u1 spkB"], r"utt2spk:2: malformed line"),
        (
            "utt2spk",
            ["spkA-u1 spkA", "spkA-u1 spkA", "spkB-u1 spkB"],
            r"utt2spk:2: key 'spkA-u1' repeats",
        ),
        (
            "utt2spk",
            ["spkA-u1 spkA", "spkA-u2 spkA", "spkC-u9 spkC"],
            r"utt2spk:3: .*'spkC-u9' is not in wav\.scp",
        ),
        ("wav.scp", ["spkA-u1 sox x.wav -t wav - |"], r"wav\.scp:1: piped command"),
        ("spk2utt", ["spkA spkA-u1 spkB-u1", "spkB spkB-u1"], r"spk2utt:1: .*'spkB-u1'.*disagrees"),
        ("segments", ["spkA-u1 spkA-u1 0.5"], r"segments:1: malformed line"),
    ],
)
def test_malformed_lines_name_file_and_line(plain, name, lines, pattern):
    write(plain, name, lines)
    with pytest.raises(DataError, match=pattern):
        KaldiDataFolder(root=plain)


def test_bad_segment_times_and_missing_files(plain, tmp_path):
    write(
        plain, "segments", ["spkA-u1 spkA-u1 0.5 0.2", "spkA-u2 spkA-u2 0 1", "spkB-u1 spkB-u1 0 1"]
    )
    with pytest.raises(DataError, match=r"segments:1: bad segment times"):
        KaldiDataFolder(root=plain)
    write(plain, "segments", ["spkA-u1 spkA-u1 0 x", "spkA-u2 spkA-u2 0 1", "spkB-u1 spkB-u1 0 1"])
    with pytest.raises(DataError, match=r"segments:1: end time 'x' is not a number"):
        KaldiDataFolder(root=plain)
    (plain / "segments").unlink()
    (plain / "wav.scp").unlink()
    with pytest.raises(DataError, match=r"no 'wav\.scp'"):
        KaldiDataFolder(root=plain)
    with pytest.raises(DataError, match="does not exist"):
        KaldiDataFolder(root=tmp_path / "nowhere")


def test_unreadable_audio_names_utterance_and_line(plain):
    write(
        plain,
        "wav.scp",
        ["spkA-u1 /no/such.wav", "spkA-u2 ../audio/a2.wav", "spkB-u1 ../audio/b1.wav"],
    )
    folder = KaldiDataFolder(root=plain)
    with pytest.raises(DataError, match=r"utterance 'spkA-u1' .*wav\.scp:1.*/no/such\.wav"):
        folder[0]


@pytest.mark.parametrize("utt", ["/etc/passwd", "../../etc/passwd", "a/../b", ".", "a\\b", "a//b"])
def test_utterance_id_must_be_a_relative_name(plain, utt):
    write(plain, "wav.scp", [f"{utt} ../audio/a1.wav", "spkB-u1 ../audio/b1.wav"])
    write(plain, "utt2spk", [f"{utt} spkA", "spkB-u1 spkB"])
    (plain / "spk2utt").unlink()
    with pytest.raises(DataError, match=r"utt2spk:1: utterance id .* is not a relative name"):
        KaldiDataFolder(root=plain)


def test_wespeaker_utterance_ids_with_slashes_are_read(plain):
    """WeSpeaker's and ESPnet's VoxCeleb data directories key utterances by their relative
    path ('id10270/5r0dWxy17C8/00001.wav'), as their trial lists name them: refused as not a
    plain name (S6 F9)."""
    ids = ["spkA/vid1/00001.wav", "spkB/vid2/00001.wav"]
    write(plain, "wav.scp", [f"{ids[0]} ../audio/a1.wav", f"{ids[1]} ../audio/b1.wav"])
    write(plain, "utt2spk", [f"{ids[0]} spkA", f"{ids[1]} spkB"])
    (plain / "spk2utt").unlink()
    folder = KaldiDataFolder(root=plain)
    assert sorted(s.path for s in folder.samples) == ids
    assert folder.identities == ["spkA", "spkB"]
    assert folder[0] is not None


@pytest.mark.parametrize("spk", ["spk/A", "..", "a\\b"])
def test_speaker_id_must_be_a_plain_name(plain, spk):
    """A speaker id is an identity name: 'spk/A' would be split with speaker 'spk'."""
    write(plain, "wav.scp", ["u1 ../audio/a1.wav", "u2 ../audio/b1.wav"])
    write(plain, "utt2spk", [f"u1 {spk}", "u2 spkB"])
    (plain / "spk2utt").unlink()
    with pytest.raises(DataError, match=r"utt2spk:1: speaker id .* is not a plain name"):
        KaldiDataFolder(root=plain)


@pytest.mark.parametrize(
    ("start", "end", "what"),
    [("0", "1e400", "end time '1e400'"), ("nan", "1", "start time 'nan'"), ("0", "inf", "end")],
)
def test_non_finite_segment_times_name_the_line(plain, start, end, what):
    write(plain, "segments", ["spkA-u1 spkA-u1 0 1", f"spkA-u2 spkA-u2 {start} {end}"])
    write(plain, "utt2spk", ["spkA-u1 spkA", "spkA-u2 spkA"])
    (plain / "spk2utt").unlink()
    with pytest.raises(DataError, match=rf"segments:2: bad segment times: {what}"):
        KaldiDataFolder(root=plain)


def test_segment_overshoot_is_cut_up_to_half_a_second_then_a_bad_sample(tmp_path):
    sf.write(tmp_path / "rec.wav", ramp(16000), 16000, subtype="FLOAT")  # 1 s
    write(tmp_path, "wav.scp", [f"rec1 {tmp_path}/rec.wav"])
    write(tmp_path, "segments", ["u1 rec1 0.5 1.4", "u2 rec1 0.5 999", "u3 rec1 1.2 1.3"])
    write(tmp_path, "utt2spk", ["u1 s1", "u2 s1", "u3 s1"])
    folder = KaldiDataFolder(root=tmp_path)
    np.testing.assert_array_equal(folder[0][0].numpy(), ramp(16000)[8000:])  # cut to the end
    with pytest.raises(DataError) as err:
        folder[1]
    msg = str(err.value)
    for part in ("'u2'", "segments:2", "recording 'rec1'", "[0.5 s, 999 s)", "rec.wav", "1.000 s"):
        assert part in msg
    with pytest.raises(DataError, match=r"'u3'.*segments:3.*starts past the end"):
        folder[2]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
@pytest.mark.parametrize("name", ["wav.scp", "utt2spk", "spk2utt"])
def test_byte_order_mark_and_utf16_tables(plain, encoding, name):
    text = (plain / name).read_text(encoding="utf-8")
    (plain / name).write_text(text, encoding=encoding)
    folder = KaldiDataFolder(root=plain)
    assert [s.path for s in folder.samples] == ["spkA-u1", "spkA-u2", "spkB-u1"]
    assert folder.identities == ["spkA", "spkB"]


def test_segments_with_byte_order_mark(tmp_path):
    sf.write(tmp_path / "rec.wav", ramp(16000), 16000, subtype="FLOAT")
    write(tmp_path, "wav.scp", [f"rec1 {tmp_path}/rec.wav"])
    (tmp_path / "segments").write_text("u1 rec1 0.1 0.2\n", encoding="utf-8-sig")
    write(tmp_path, "utt2spk", ["u1 s1"])
    assert KaldiDataFolder(root=tmp_path)[0][0].numel() == 1600


def test_missing_audio_and_archive_offsets(plain):
    write(plain, "wav.scp", ["spkA-u1 /no/such.wav", "spkA-u2 ../audio/a2.wav", "spkB-u1 x.wav"])
    with pytest.raises(DataError, match=r"'spkA-u1' .*wav\.scp:1.*'/no/such\.wav' does not exist"):
        KaldiDataFolder(root=plain)[0]
    write(plain, "wav.scp", ["spkA-u1 feats.ark:1234", "spkA-u2 a.wav", "spkB-u1 b.wav"])
    with pytest.raises(DataError, match=r"wav\.scp:1: archive offset 'feats\.ark:1234'"):
        KaldiDataFolder(root=plain)


def test_a_recipe_relative_path_found_nowhere_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """wav.scp paths relative to the recipe folder read from there only; elsewhere the error
    named one candidate and hid that the current directory mattered (S3-21)."""
    recipe = tmp_path / "recipe"
    (recipe / "audio").mkdir(parents=True)
    sf.write(recipe / "audio" / "a1.wav", ramp(3200), 16000, subtype="FLOAT")
    data = recipe / "data" / "train"
    data.mkdir(parents=True)
    write(data, "wav.scp", ["spkA-u1 audio/a1.wav"])
    write(data, "utt2spk", ["spkA-u1 spkA"])
    monkeypatch.chdir(recipe)
    assert KaldiDataFolder(root=data)[0][0].numel() == 3200  # from the recipe folder: found
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"relative path 'audio/a1.wav', found neither under the "
                      r"data directory .* nor under the current directory"):  # fmt: skip
        KaldiDataFolder(root=data)[0]


def test_a_relative_path_found_in_both_places_is_warned(tmp_path, monkeypatch):
    """Read from under the data directory without a word, though a recipe meant its own
    folder: every number changed with the current directory (H17 F21)."""
    recipe = tmp_path / "recipe"
    data = recipe / "data" / "train"
    for where in (recipe, data):
        (where / "audio").mkdir(parents=True)
        sf.write(where / "audio" / "a1.wav", ramp(3200), 16000, subtype="FLOAT")
    write(data, "wav.scp", ["spkA-u1 audio/a1.wav"])
    write(data, "utt2spk", ["spkA-u1 spkA"])
    monkeypatch.chdir(recipe)
    with pytest.warns(UserWarning, match=r"1 relative path\(s\) are found both under the data "
                      r"directory .* and under the current directory .*'audio/a1.wav'"):  # fmt: skip
        KaldiDataFolder(root=data)
    monkeypatch.chdir(tmp_path)  # only under the data directory: no word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KaldiDataFolder(root=data)


def test_cn_celeb_enroll_table_mistakes_are_named_at_their_own_line(tmp_path):
    """A key given twice in enroll.lst took its last line silently (a speaker's targets were
    scored against another's enrolment); a bad path there was reported at trials.lst:1; a
    list without its enroll.lst said the keys were missing files (H17 F2-F4)."""
    from metaemb.core.errors import DataError
    from metaemb.core.eval.trials import read_trials

    ev = tmp_path / "eval"
    for rel in ("enroll/a-enroll.flac", "enroll/b-enroll.flac", "test/a-1.flac"):
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        (ev / rel).write_bytes(b"")
    (ev / "lists").mkdir()
    listed = ev / "lists" / "trials.lst"
    listed.write_text("a-enroll test/a-1.wav 1\nb-enroll test/a-1.wav 0\n")
    table = ev / "lists" / "enroll.lst"
    table.write_text("a-enroll enroll/a-enroll.wav\nb-enroll enroll/b-enroll.wav\n")
    got = read_trials(listed, ev, "cnceleb")
    assert [t.enroll for t in got] == [("enroll/a-enroll.flac",), ("enroll/b-enroll.flac",)]
    table.write_text(table.read_text() + "a-enroll enroll/a-enroll.wav\n")  # the same: fine
    assert read_trials(listed, ev, "cnceleb") == got
    table.write_text(table.read_text() + "a-enroll enroll/b-enroll.wav\n")
    with pytest.raises(DataError, match=r"enroll.lst:4: enrolment key 'a-enroll' is given again"):
        read_trials(listed, ev, "cnceleb")
    table.write_text("a-enroll ../outside.wav\nb-enroll enroll/b-enroll.wav\n")
    with pytest.raises(DataError, match=r"lists/enroll.lst:1: path '\.\./outside.wav'"):
        read_trials(listed, ev, "cnceleb")
    table.write_text("b-enroll enroll/b-enroll.wav\n")
    with pytest.raises(DataError, match=r"trials.lst:1: 'a-enroll' is no file .* no enrolment key"):
        read_trials(listed, ev, "cnceleb")
    table.unlink()
    with pytest.raises(DataError, match=r"looks like a CN-Celeb enrolment key.*enroll.lst"):
        read_trials(listed, ev, "cnceleb")


def test_cn_celeb_coverage_counts_speakers_not_its_folders(tmp_path, capsys):
    """`trials coverage` took the first folder as the identity: 2 identities, 'enroll' and
    'test', for a list of 3 speakers (H17 F20)."""
    import json

    from helpers import run_cli

    ev = tmp_path / "eval"
    files = ["enroll/a-enroll.flac", "enroll/b-enroll.flac", "test/a-1.flac", "test/c-2.flac"]
    for rel in files:
        (ev / rel).parent.mkdir(parents=True, exist_ok=True)
        (ev / rel).write_bytes(b"")
    (ev / "lists").mkdir()
    listed = ev / "lists" / "trials.lst"
    listed.write_text("a-enroll test/a-1.wav 1\nb-enroll test/a-1.wav 0\nb-enroll test/c-2.wav 0\n")
    (ev / "lists" / "enroll.lst").write_text(
        "a-enroll enroll/a-enroll.wav\nb-enroll enroll/b-enroll.wav\n"
    )
    code, out, _ = run_cli(["trials", "coverage", listed, "--root", ev], capsys)
    got = json.loads(out)
    assert code == 0 and got["identities"] == 3 and got["identities_with_targets"] == 1
    # test files kept in speaker folders, their names without a prefix (H18 F9)
    from metaemb.plugins.audio.trial_lists import CnCelebTrials

    assert CnCelebTrials().identity_of("test/id00801/utt2.wav") == "id00801"
    assert CnCelebTrials().identity_of("test/id00801-x-1.wav") == "id00801"


def test_utterances_utt2spk_leaves_out_are_counted(plain):
    """An utterance in wav.scp but not utt2spk was dropped without a word; a trial naming it
    then blamed the list (H17 F5). As Kaldi's fix_data_dir.sh: left out, with a count."""
    write(plain, "utt2spk", ["spkA-u1 spkA", "spkB-u1 spkB"])
    write(plain, "spk2utt", ["spkA spkA-u1", "spkB spkB-u1"])
    with pytest.warns(UserWarning, match=r"wav.scp: 1 utterance\(s\) not in utt2spk are left "
                      r"out \(no speaker\): 'spkA-u2'"):  # fmt: skip
        folder = KaldiDataFolder(root=plain)
    assert [s.path for s in folder.samples] == ["spkA-u1", "spkB-u1"]


def test_a_kaldi_sample_is_known_by_its_recording(plain, tmp_path):
    """Galleries remembered Kaldi samples as '<data dir>/<utterance id>', no file: every later
    enrollment warned that they were gone, and the same recording enrolled by path counted
    twice (H17 F22). A segment is its recording and its times."""
    folder = KaldiDataFolder(root=plain)
    sample = folder.samples[1]  # spkA-u2, listed as ../audio/a2.wav
    assert folder.source_of(sample) == str((plain.parent / "audio" / "a2.wav").resolve())
    write(plain, "segments", ["spkA-u1 spkA-u1 0.5 1.0", "spkA-u2 spkA-u2 0 0.2",
                              "spkB-u1 spkB-u1 0 -1"])  # fmt: skip
    segmented = KaldiDataFolder(root=plain)
    assert segmented.source_of(segmented.samples[0]).endswith("a1.wav#0.5-1")


def test_another_folder_for_an_8khz_run_names_the_option_to_carry():
    """`--folder kaldi` on a run trained at 8 kHz was refused without saying that the new
    folder starts from its own 16 kHz default (R4 F11)."""
    from metaemb.core.config.resolution import resolve
    from metaemb.core.deploy.run_data import read_with
    from metaemb.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--folder starts from that folder's defaults; the "
                       r"run's folder had --folder-set sample_rate=8000"):  # fmt: skip
        read_with(resolve("speaker", sets=["folder.sample_rate=8000"]), "kaldi")
    read_with(resolve("speaker", sets=["folder.sample_rate=8000"]), "kaldi", {"sample_rate": 8000})
