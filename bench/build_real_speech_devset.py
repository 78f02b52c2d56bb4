"""Build a small real-speech development set from recorded voices that install offline (Debian).

    apt-get install festival flite festvox-kallpc16k festvox-kdlpc16k festvox-italp16k \
        festvox-itapc16k festvox-czech-dita festvox-czech-krb festvox-czech-machac \
        festvox-czech-ph festvox-suopuhe-lj festvox-suopuhe-mv festvox-ca-ona-hts festvox-us-slt-hts
    python bench/build_real_speech_devset.py --out DEV_CLEAN
    python bench/build_real_speech_devset.py --degrade-from DEV_CLEAN --out DEV   # + channels
    python bench/build_real_speech_devset.py --prompts-from PROMPTS --utterances 40 --out DEV_P
    python bench/build_real_speech_devset.py --levels-from DEV_P --out DEV_P_LEVELS

`--prompts-from` reads Asterisk's recorded telephone prompts (natural read speech of 7
professional speakers; unpack the .deb packages listed in PROMPTS under PROMPTS/<package>, see
docs/speaker.md) and needs PyAV for the .g722/.gsm files. `--levels-from` copies a set with each
utterance at a random level (−30…0 dB).

What it is, honestly: each voice is one real person's recordings, cut into diphones (festival's
kal, ked, Italian lp/pc, Czech dita/krb/machac/ph, Finnish lj/mv, flite's kal16) and
concatenated by a synthesiser, or a statistical voice trained on one person's recordings (the
HTS/clustergen voices: slt, ona, awb, rms). So the speaker cues — vocal tract, voice quality,
recording channel — come from real people, but the prosody and the phone sequences are a
machine's, the diphone joins are audible, and every utterance of a speaker comes from the same
recording session. It is a transfer check (does a model trained on metaemb's synthetic voices
carry over to real voices?), not a benchmark: speakers also differ in language here.

The text is random: English voices read random sentences from a fixed word list, the others read
random pseudo-words built from their language's syllables (written in plain ASCII, which their
letter-to-sound rules read as native words). Each utterance gets its own duration stretch
(0.85–1.2), so speaking rate varies as nuisance. Output: `<out>/<speaker>/<utt>.wav` at 16 kHz
(resampled exactly where the voice is 22.05/32/44.1 kHz) and `<out>/trials.txt` in VoxCeleb
format (all target pairs, the same number of random non-target pairs, seeded).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaemb.plugins.audio.io import read_audio

# speaker -> list of (engine, voice, language). One person per speaker; flite's kal16 and
# festival's kal_diphone are the same person (Kal), as are festival HTS slt and flite slt.
VOICES: dict[str, list[tuple[str, str, str]]] = {
    "kal": [("festival", "kal_diphone", "en"), ("flite", "kal16", "en")],
    "ked": [("festival", "ked_diphone", "en")],
    "slt": [("festival", "cmu_us_slt_arctic_hts", "en"), ("flite", "slt", "en")],
    "awb": [("flite", "awb", "en")],
    "rms": [("flite", "rms", "en")],
    "ona": [("festival", "upc_ca_ona_hts", "ca")],
    "dita": [("festival", "czech_dita", "cs")],
    "krb": [("festival", "czech_krb", "cs")],
    "machac": [("festival", "czech_machac", "cs")],
    "ph": [("festival", "czech_ph", "cs")],
    "lj": [("festival", "suo_fi_lj_diphone", "fi")],
    "mv": [("festival", "hy_fi_mv_diphone", "fi")],
    "lp": [("festival", "lp_diphone", "it")],
    "pc": [("festival", "pc_diphone", "it")],
}


def words(text: str) -> list[str]:
    """A whitespace-separated word list (keeps long vocabularies readable)."""
    return text.split()


ENGLISH = words(
    """
the a one two three people time year way day man thing woman life child world school state
family student group country problem hand part place case week company system program question
work government number night point home water room mother area money story fact month lot right
study book eye job word business issue side kind head house service friend father power hour
game line end member law car city community name president team minute idea kid body information
back parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education foot boy age policy music
market sense nation plan college interest death experience effect use class control care field
development role effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action model season
society tax director position player record paper space ground form event official matter center
couple is was has had goes came made said took saw knew thought found gave told became left felt
brought began kept held wrote stood heard let meant set met ran paid sat spoke lay led read grew
lost fell sent built understood drew broke spent cut rose drove bought wore chose big small old
new good great little long high different large important young early public bad able last late
hard major better economic strong possible whole free military true federal international full
special easy clear recent certain personal open red difficult available likely short single
medical current wrong private past foreign fine common poor natural significant similar hot dead
central happy serious ready simple left physical general environmental financial blue democratic
dark various entire close legal religious cold final main green nice huge popular traditional
cultural quickly slowly today tomorrow yesterday here there never always often sometimes really
very quite almost and but or because although when while after before since until if unless
though
"""
)

# Syllable inventories (ASCII spellings each language's letter-to-sound rules read natively).
SYLLABLES = {
    "cs": (
        words("b c d f h ch j k l m n p r s t v z st pr kr tr sl pl br dr"),
        words("a e i o u y"),
        ["", "", "", "n", "k", "s", "t", "l", "m", "r", "ch"],
    ),
    "fi": (
        words("h j k l m n p r s t v"),
        words("a e i o u y aa ee ii oo uu ai ei oi ui au ou"),
        ["", "", "", "n", "s", "t", "l", "k"],
    ),
    "it": (
        words("b c d f g l m n p r s t v z ch gh tr pr st br"),
        words("a e i o u ia io ie"),
        ["", "", "", "", "n", "l", "r"],
    ),
    "ca": (
        words("b c d f g l m n p r s t v x ll ny tr pr"),
        words("a e i o u"),
        ["", "", "", "n", "s", "t", "l", "r"],
    ),
}


def sentence(lang: str, rng: random.Random) -> str:
    """A random sentence of 8–20 words (English words, or pseudo-words of 1–4 syllables)."""
    n = rng.randint(8, 20)
    if lang == "en":
        words = [rng.choice(ENGLISH) for _ in range(n)]
    else:
        onsets, nuclei, codas = SYLLABLES[lang]
        words = [
            "".join(
                rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas)
                for _ in range(rng.randint(1, 4))
            )
            for _ in range(n)
        ]
    if n > 10:
        words[rng.randint(3, n - 3)] += ","
    return " ".join(words) + "."


def synthesise(engine: str, voice: str, text: str, stretch: float, out: Path) -> None:
    if engine == "flite":
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text]
        subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True, timeout=120)
        return
    txt = out.with_suffix(".txt")
    txt.write_text(text + "\n")
    setup = f"(voice_{voice}) (Parameter.set 'Duration_Stretch {stretch})"
    cmd = ["text2wave", "-otype", "riff", "-eval", setup, str(txt), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def write_trials(root: Path, seed: int) -> int:
    """All target pairs and as many random non-target pairs, VoxCeleb format."""
    rng = random.Random(seed)
    utts = {d.name: sorted(p.relative_to(root).as_posix() for p in d.glob("*.wav"))
            for d in sorted(root.iterdir()) if d.is_dir()}  # fmt: skip
    targets = [(a, b) for u in utts.values() for i, a in enumerate(u) for b in u[i + 1 :]]
    spk = sorted(utts)
    nontargets: set[tuple[str, str]] = set()
    while len(nontargets) < len(targets):
        s1, s2 = rng.sample(spk, 2)
        nontargets.add((rng.choice(utts[s1]), rng.choice(utts[s2])))
    lines = [f"1 {a} {b}" for a, b in targets] + [f"0 {a} {b}" for a, b in sorted(nontargets)]
    rng.shuffle(lines)
    (root / "trials.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def degrade(src: Path, dst: Path, seed: int) -> None:
    """Copy a clean dev set with one random recording channel per utterance: a high-pass
    (50–300 Hz) and low-pass (3.4–8 kHz) band, two peaking equaliser bands (±9 dB), coloured
    background noise at 5–30 dB SNR, and in 40 % of utterances a room (exponential-decay impulse
    response, RT60 0.2–0.7 s). Without it every speaker's utterances share one studio channel,
    which a no-learning spectral average already identifies (MFCC mean+std: 2 % EER)."""
    import torchaudio.functional as AF

    from metaemb.plugins.audio.augment_sources import coloured_noise, fft_convolve, simulate_rirs

    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=g))

    cpu = torch.device("cpu")
    for path in sorted(src.rglob("*.wav")):
        x, _ = sf.read(path, dtype="float32")
        x = torch.from_numpy(x)
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=g)))
        x = AF.highpass_biquad(x, 16000, u(50, 300))
        x = AF.lowpass_biquad(x, 16000, u(3400, 7900))
        for _ in range(2):
            x = AF.equalizer_biquad(x, 16000, u(200, 5000), u(-9, 9), Q=u(0.5, 2.0))
        if torch.rand((), generator=g) < 0.4:
            h = simulate_rirs(1, 8000, 16000, torch.tensor([u(0.2, 0.7)]),
                              torch.tensor([u(0, 10)]), cpu)  # fmt: skip
            y = fft_convolve(x[None], h)[0]
            x = y * (x.square().mean() / y.square().mean().clamp(min=1e-12)).sqrt()
        noise = coloured_noise(1, x.numel(), torch.tensor([u(0, 2)]), cpu)[0]
        snr = u(5, 30)
        x = x + noise * (x.square().mean() / noise.square().mean() / 10 ** (snr / 10)).sqrt()
        x = x / x.abs().max().clamp(min=1e-9) * u(0.1, 0.9)
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(out, x.numpy(), 16000, subtype="PCM_16")
    shutil.copy(src / "trials.txt", dst / "trials.txt")


# Natural speech: Asterisk's recorded telephone prompts (one professional speaker per package;
# Allison Smith recorded both the US-English and the Mexican-Spanish set).
PROMPTS: dict[str, list[str]] = {
    "allison": ["asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722"],
    "june": ["asterisk-core-sounds-fr-g722"],
    "carlo": ["asterisk-core-sounds-it-g722"],
    "ivr_ru": ["asterisk-core-sounds-ru-g722"],
    "menardi": ["asterisk-prompt-it-menardi-wav"],
    "armelle": ["asterisk-prompt-fr-armelle"],
    "es_co": ["asterisk-prompt-es-co"],
}


def decode(path: Path) -> torch.Tensor:
    """Mono float waveform at 16 kHz of a prompt (.g722 16 kHz, .gsm/.wav 8 kHz), via PyAV."""
    import av
    import numpy as np
    import torchaudio.functional as AF

    with av.open(str(path), format=None if path.suffix == ".wav" else path.suffix[1:]) as c:
        rate = c.streams.audio[0].rate
        parts = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    x = torch.from_numpy(x.astype(np.float32) / (32768.0 if x.dtype == np.int16 else 1.0))
    return x if rate == 16000 else AF.resample(x, rate, 16000)


def build_prompts(root: Path, out: Path, per_speaker: int, seed: int) -> None:
    """Natural-speech dev set from unpacked Asterisk prompt packages under `root`
    (`dpkg-deb -x PACKAGE.deb root/PACKAGE`): prompts of at least 1.5 s, `per_speaker` each."""
    out.mkdir(parents=True)
    for speaker, packages in PROMPTS.items():
        files = sorted(f for pkg in packages for f in (root / pkg).rglob("*")
                       if f.suffix in {".g722", ".gsm", ".wav"} and "silence" not in f.parts)  # fmt: skip
        random.Random(f"{seed}-{speaker}").shuffle(files)
        folder = out / speaker
        folder.mkdir()
        kept = 0
        for f in files:
            wave = decode(f)
            if wave.numel() < 1.5 * 16000:
                continue
            wave = wave / wave.abs().max().clamp(min=1e-9) * 0.5
            sf.write(folder / f"{kept:03d}.wav", wave.numpy(), 16000, subtype="PCM_16")
            kept += 1
            if kept == per_speaker:
                break
        print(f"{speaker}: {kept} prompts", flush=True)
    print(f"{out}: {write_trials(out, seed)} trials")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--utterances", type=int, default=30, help="per speaker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degrade-from", type=Path, help="clean dev set to copy with random channels")
    ap.add_argument("--prompts-from", type=Path, help="unpacked Asterisk prompt packages")
    ap.add_argument("--levels-from", type=Path, help="dev set to copy at random levels (−30…0 dB)")
    args = ap.parse_args()
    if args.levels_from:
        rng = random.Random(args.seed)
        for path in sorted(args.levels_from.rglob("*.wav")):
            x, rate = sf.read(path, dtype="float32")
            out = args.out / path.relative_to(args.levels_from)
            out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(out, x * 10 ** (rng.uniform(-30, 0) / 20), rate, subtype="PCM_16")
        shutil.copy(args.levels_from / "trials.txt", args.out / "trials.txt")
        return
    if args.prompts_from:
        build_prompts(args.prompts_from, args.out, args.utterances, args.seed)
        return
    if args.degrade_from:
        degrade(args.degrade_from, args.out, args.seed)
        print(f"{args.out}: channel-degraded copy of {args.degrade_from}")
        return
    if args.out.exists():
        sys.exit(f"{args.out} exists; remove it first.")
    tmp_root = Path(tempfile.mkdtemp(prefix=".devset-", dir=args.out.parent))
    made: dict[str, int] = {}
    try:
        for speaker, voices in VOICES.items():
            rng = random.Random(f"{args.seed}-{speaker}")
            folder = tmp_root / speaker
            folder.mkdir()
            for j in range(args.utterances):
                engine, voice, lang = voices[j % len(voices)]
                raw = folder / f"raw{j:03d}.wav"
                try:
                    synthesise(engine, voice, sentence(lang, rng), rng.uniform(0.85, 1.2), raw)
                    wave = read_audio(raw, 16000)  # exact windowed-sinc resampling
                except (subprocess.SubprocessError, OSError, Exception) as exc:
                    print(f"skip {speaker}/{voice}: {exc}", file=sys.stderr)
                    break
                wave = wave / wave.abs().max().clamp(min=1e-9) * 0.5
                sf.write(folder / f"{j:03d}.wav", wave.numpy(), 16000, subtype="PCM_16")
                for extra in (raw, raw.with_suffix(".txt")):
                    extra.unlink(missing_ok=True)
            made[speaker] = len(list(folder.glob("*.wav")))
            if made[speaker] < 2:
                shutil.rmtree(folder)
                del made[speaker]
            print(f"{speaker}: {made.get(speaker, 0)} utterances", flush=True)
        n = write_trials(tmp_root, args.seed)
        tmp_root.rename(args.out)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    secs = sum(sf.info(p).duration for p in args.out.rglob("*.wav"))
    print(f"{args.out}: {len(made)} speakers, {sum(made.values())} utterances, "
          f"{secs / 60:.1f} min, {n} trials")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="audio at .* is resampled")
    main()
