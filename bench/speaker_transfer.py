"""Does the speaker model transfer to real voices? EER on the real-speech development set.

    python bench/build_real_speech_devset.py --out DEV            # once (Debian voices)
    python bench/speaker_transfer.py --dev DEV name=RUN_DIR [name=RUN_DIR …]

Prints one row per system on DEV/trials.txt (VoxCeleb format): the no-learning baseline —
cosine of per-utterance MFCC mean+std (20 Kaldi MFCCs from 40 mel bands, each dimension
standardised over the set) — and each trained run, evaluated with `metaemb evaluate RUN --data
DEV --trials DEV/trials.txt`, then again with `--no-adapt` (the run's scorer without its
label-free centring on the dev files). Beside each run it prints its synthetic-validation EER
(the best epoch of its metrics.jsonl), so transfer can be read against in-domain accuracy.
With --fusion, one more column: the run's scores averaged with the MFCC baseline's (score fusion).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaemb.core.eval.metrics import eer
from metaemb.plugins.audio.io import read_audio


def read_trials(path: Path) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            label, a, b = line.split()
            out.append((int(label), a, b))
    return out


def mfcc_baseline(dev: Path, trials: list[tuple[int, str, str]]) -> tuple[float, dict]:
    """EER (%) of cosine on standardised per-utterance MFCC mean ‖ std, and its scores by pair."""
    import torchaudio.compliance.kaldi as K

    names = sorted({p for _, a, b in trials for p in (a, b)})
    vecs = []
    for name in names:
        wave = read_audio(dev / name, 16000)
        m = K.mfcc(wave[None] * 32768, num_ceps=20, num_mel_bins=40, sample_frequency=16000)
        vecs.append(torch.cat([m.mean(0), m.std(0)]))
    x = torch.stack(vecs)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-8)
    x = torch.nn.functional.normalize(x, dim=1)
    index = {n: i for i, n in enumerate(names)}
    scores = torch.tensor([float(x[index[a]] @ x[index[b]]) for _, a, b in trials])
    labels = torch.tensor([t[0] for t in trials])
    by_pair = {(a, b): float(v) for (_, a, b), v in zip(trials, scores, strict=True)}
    return 100 * eer(scores[labels == 1].numpy(), scores[labels == 0].numpy()), by_pair


def fused_eer(scores_txt: Path, mfcc: dict, trials: list[tuple[int, str, str]]) -> float:
    """EER (%) of the average of a run's scores (scores.txt) and the MFCC baseline's, each
    standardised over the trials (label-free), equal weights: score fusion of two systems."""
    run = {}
    for line in scores_txt.read_text().splitlines():
        enroll, test, _, value = line.split("\t")
        run[(enroll, test)] = float(value)
    pairs = [(a, b) for _, a, b in trials]
    fused = 0
    for table in (run, mfcc):
        v = torch.tensor([table[p] for p in pairs], dtype=torch.float64)
        fused = fused + (v - v.mean()) / v.std()
    labels = torch.tensor([t[0] for t in trials])
    return 100 * eer(fused[labels == 1].numpy(), fused[labels == 0].numpy())


def run_eer(run: Path, dev: Path, out: Path, adapt: bool = True) -> float:
    """EER (%) of `metaemb evaluate RUN` on the dev trials (`adapt`: its --adapt/--no-adapt)."""
    cmd = [sys.executable, "-c", "from metaemb.cli import main; main()", "evaluate", str(run),
           "--data", str(dev), "--trials", str(dev / "trials.txt"), "--out", str(out),
           "--adapt" if adapt else "--no-adapt"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evaluate {run} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    value = metrics.get("eer", metrics.get("verification", {}).get("eer"))
    return 100 * float(value) if value is not None and value <= 1 else float(value)


def validation_eer(run: Path) -> str:
    """Best synthetic-validation EER (%) recorded in the run's metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return "–"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    best = min((r["eer"] for r in rows if "eer" in r), default=None)
    return "–" if best is None else f"{100 * best:.1f} %" if best <= 1 else f"{best:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--fusion", action="store_true", help="also: each run fused with MFCC")
    ap.add_argument("runs", nargs="*", help="name=RUN_DIR")
    args = ap.parse_args()
    trials = read_trials(args.dev / "trials.txt")
    n_tar = sum(t[0] for t in trials)
    spk = len({t[1].split("/")[0] for t in trials})
    print(f"dev set {args.dev}: {spk} speakers, {len(trials)} trials ({n_tar} target)")
    fusion = f" {'fused with MFCC':>16}" if args.fusion else ""
    print(f"{'system':<28} {'dev EER':>9} {'--no-adapt':>11} {'synthetic val. EER':>19}{fusion}")
    mfcc, mfcc_scores = mfcc_baseline(args.dev, trials)
    print(f"{'MFCC mean+std cosine':<28} {mfcc:>8.1f} % {'–':>11} {'–':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.runs:
            name, _, path = item.partition("=")
            run = Path(path or name)
            value = run_eer(run, args.dev, Path(tmp) / name)
            plain = run_eer(run, args.dev, Path(tmp) / f"{name}-plain", adapt=False)
            fused = ""
            if args.fusion:
                fused = (
                    f" {fused_eer(Path(tmp) / name / 'scores.txt', mfcc_scores, trials):>14.1f} %"
                )
            print(f"{name:<28} {value:>8.1f} % {plain:>9.1f} % {validation_eer(run):>19}{fused}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
