"""`metaemb evaluate` and `metaemb embed`: a trained model + data + trials → metrics, scores, plots.

Every file in the trials is embedded once, however many trials it appears in. Without a trial list
or protocol, the run's own validation trials are regenerated, so the numbers match training's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from metaemb.core import metrics
from metaemb.core.components import build, validate_options
from metaemb.core.config import Config, from_dict
from metaemb.core.device import pick_device
from metaemb.core.embed import extract
from metaemb.core.errors import DataError, MetaembError
from metaemb.core.interfaces import SampleFolder, Trial
from metaemb.core.pipeline import Components, data_root
from metaemb.core.plugins import registry
from metaemb.core.runs import atomic_write_text, load_checkpoint
from metaemb.core.trials import make_trials, read_trials, write_scores


def find_checkpoint(path: Path) -> Path:
    """A run directory resolves to its best.pt (or last.pt); a file is used as it is."""
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise MetaembError(f"run directory '{path}' has no best.pt or last.pt: was it trained?")
    if not path.exists():
        raise MetaembError(f"'{path}' is neither a run directory nor a checkpoint file.")
    return path


@dataclass
class Loaded:
    """A model rebuilt from a checkpoint, with its config and data pipeline."""

    config: Config
    state: dict[str, Any]
    parts: Components
    device: torch.device

    @classmethod
    def from_path(cls, path: Path, data: Path | None, device: str) -> Loaded:
        ckpt = find_checkpoint(path)
        state = load_checkpoint(ckpt)
        cfg = from_dict(state["config"])
        if data is not None:
            cfg.data.root = str(data)
        root = data_root(cfg)
        parts = Components.build(cfg, root)
        parts.model.load_state_dict(state["model"])
        dev = pick_device(device)
        parts.model.to(dev).eval()
        return cls(cfg, state, parts, dev)

    def embed(self, folder: SampleFolder, indices: list[int] | None, workers: int) -> Any:
        """Embeddings of `folder.samples[indices]` (all when None), in that order."""
        ds = self.parts.dataset(folder, train=False)
        if indices is not None:
            ds.indices = list(indices)
        out, _, bad = extract(
            self.parts.model,
            ds,
            self.device,
            batch_size=self.config.eval.batch_size,
            workers=workers,
        )
        if bad:
            names = ", ".join(b.path for b in bad[:5])
            raise DataError(f"{len(bad)} sample(s) could not be read: {names}")
        return out


def pool(emb: Any, groups: list[list[int]]) -> Any:
    """Multi-sample enrollment: mean of L2-normalised points, or summed GME natural parameters."""
    if all(len(g) == 1 for g in groups):
        return emb[torch.tensor([g[0] for g in groups], dtype=torch.long)]
    if isinstance(emb, torch.Tensor):
        unit = torch.nn.functional.normalize(emb, dim=1)
        return torch.stack([unit[torch.tensor(g)].mean(0) for g in groups])
    flat = torch.tensor([i for g in groups for i in g], dtype=torch.long)
    owner = torch.tensor([k for k, g in enumerate(groups) for _ in g], dtype=torch.long)
    from metaemb.core.gme import pool_by_index

    return pool_by_index(emb[flat], owner, len(groups))


class Evaluation:
    """One evaluation: load model, read/regenerate trials, embed once, score, report."""

    def __init__(
        self,
        run: Path,
        data: Path | None = None,
        trials: Path | None = None,
        protocol: str | None = None,
        scorer: str | None = None,
        calibrate: Path | None = None,
        out: Path | None = None,
        device: str = "auto",
        workers: int = 2,
        console: Console | None = None,
    ) -> None:
        self.run_path = run
        self.data, self.trials_path, self.protocol = data, trials, protocol
        self.scorer_name, self.calibrate_path = scorer, calibrate
        self.out, self.device, self.workers = out, device, workers
        self.console = console or Console()

    # -- trials --------------------------------------------------------------------------
    def _trials(self, loaded: Loaded) -> tuple[SampleFolder, list[Trial], str]:
        cfg = loaded.config
        folder = loaded.parts.folder
        if self.protocol:
            reader = registry("protocols").get(self.protocol)
            return folder, reader(loaded.parts.root, self.trials_path), self.protocol
        if self.trials_path:
            trials = read_trials(self.trials_path, root=loaded.parts.root)
            return folder, trials, self.trials_path.stem
        _, val = folder.split(cfg.data.val_fraction, seed=cfg.train.seed)
        trials = make_trials(
            val, n_target=cfg.eval.max_targets, n_nontarget=cfg.eval.nontargets, seed=cfg.train.seed
        )
        return val, trials, "validation"

    def _scorer(self, loaded: Loaded) -> Any:
        cfg = loaded.config
        name = self.scorer_name or cfg.eval.scorer
        opts = cfg.options("scorer") if name == cfg.eval.scorer else {}
        scorer = build("scorers", name, validate_options("scorers", name, opts, "scorer"))
        if not getattr(scorer, "requires_fit", False):
            return scorer
        saved = loaded.state.get("scorer") or {}
        if name == cfg.eval.scorer and saved:
            scorer.load_state_dict(saved)
            return scorer
        train, _ = loaded.parts.folder.split(cfg.data.val_fraction, seed=cfg.train.seed)
        self.console.print(f"fitting scorer '{name}' on {len(train)} training samples …")
        emb = loaded.embed(train, None, self.workers)
        scorer.fit(emb, torch.tensor(train.labels))
        return scorer

    def score(self, loaded: Loaded, folder: SampleFolder, trials: list[Trial], scorer: Any):
        where = {s.path: i for i, s in enumerate(folder.samples)}
        needed = sorted({p for t in trials for p in (*t.enroll, t.test)})
        missing = [p for p in needed if p not in where]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) named in the trials are not in '{folder.root}': "
                + ", ".join(missing[:5])
            )
        emb = loaded.embed(folder, [where[p] for p in needed], self.workers)
        pos = {p: i for i, p in enumerate(needed)}
        enroll = pool(emb, [[pos[p] for p in t.enroll] for t in trials])
        test = emb[torch.tensor([pos[t.test] for t in trials], dtype=torch.long)]
        return scorer.score(enroll, test).double().cpu()

    # -- run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        loaded = Loaded.from_path(self.run_path, self.data, self.device)
        cfg = loaded.config
        folder, trials, trials_name = self._trials(loaded)
        labels = torch.tensor([t.label if t.label is not None else -1 for t in trials])
        if (labels < 0).any():
            raise DataError("every trial needs a target/non-target label to compute metrics.")
        scorer = self._scorer(loaded)
        scores = self.score(loaded, folder, trials, scorer)
        tar, non = scores[labels == 1].numpy(), scores[labels == 0].numpy()
        result: dict[str, Any] = {
            "trials": trials_name,
            "scorer": self.scorer_name or cfg.eval.scorer,
            **metrics.verification_report(tar, non, p_targets=tuple(cfg.eval.p_targets)),
        }
        if self.protocol == "lfw" or len(trials) == 6000:
            mean, std, _ = metrics.kfold_accuracy(scores.numpy(), labels.numpy(), folds=10)
            result["accuracy_10fold"] = float(mean)
            result["accuracy_10fold_std"] = float(std)
            result["tar_at_far_0.001"] = float(metrics.tar_at_far(tar, non, 1e-3))
        if self.calibrate_path:
            result.update(self._calibrated(loaded, folder, scorer, scores, labels, cfg))
        out = self.out or (self._run_dir() / f"eval-{trials_name}")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True))
        write_scores(out / "scores.txt", trials, scores.tolist())
        self._plots(out, tar, non, result)
        self._print(result, out)
        return result

    def _calibrated(self, loaded, folder, scorer, scores, labels, cfg) -> dict[str, float]:
        from metaemb.core.calibration import LinearCalibration

        cal_trials = read_trials(self.calibrate_path, root=loaded.parts.root)
        cal_scores = self.score(loaded, folder, cal_trials, scorer)
        cal_labels = torch.tensor([t.label for t in cal_trials])
        cal = LinearCalibration()
        cal.fit(cal_scores[cal_labels == 1], cal_scores[cal_labels == 0])
        calibrated = cal(scores)
        rep = metrics.verification_report(
            calibrated[labels == 1].numpy(),
            calibrated[labels == 0].numpy(),
            p_targets=tuple(cfg.eval.p_targets),
        )
        return {f"calibrated_{k}": v for k, v in rep.items() if not k.startswith("n_")}

    def _run_dir(self) -> Path:
        return self.run_path if self.run_path.is_dir() else self.run_path.parent

    def _plots(self, out: Path, tar, non, result: dict[str, Any]) -> None:
        try:
            from metaemb.core import report
        except ImportError:  # pragma: no cover - report is part of the package
            return
        try:
            made = report.verification_plots(out, tar, non, result)
        except report.PlotsUnavailable as exc:
            self.console.print(f"[yellow]no plots:[/] {exc}")
            return
        for p in made:
            self.console.print(f"plot: {p}")

    def _print(self, result: dict[str, Any], out: Path) -> None:
        table = Table(title=f"evaluation on {result['trials']} (scorer {result['scorer']})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in result.items():
            if k in ("trials", "scorer"):
                continue
            if isinstance(v, float) and ("eer" in k or "accuracy" in k or "tar_at" in k):
                table.add_row(k, f"{100 * v:.2f}%")
            elif isinstance(v, float):
                table.add_row(k, f"{v:.4f}")
            else:
                table.add_row(k, str(v))
        if "accuracy_10fold" in result:
            table.add_row(
                "10-fold accuracy",
                f"{100 * result['accuracy_10fold']:.2f} ± {100 * result['accuracy_10fold_std']:.2f}%",
            )
        self.console.print(table)
        self.console.print(f"wrote {out / 'metrics.json'} and {out / 'scores.txt'}")


def embed_folder(
    checkpoint: Path, data: Path, out: Path, device: str = "auto", workers: int = 2
) -> int:
    """Embed every sample of `data`; saves {embeddings | a,b, paths, identities} with torch.save."""
    from metaemb.core.runs import atomic_write_bytes

    loaded = Loaded.from_path(checkpoint, data, device)
    folder = loaded.parts.folder
    emb = loaded.embed(folder, None, workers)
    payload: dict[str, Any] = {
        "paths": [s.path for s in folder.samples],
        "identities": [s.identity for s in folder.samples],
    }
    if isinstance(emb, torch.Tensor):
        payload["embeddings"] = emb
    else:
        payload["a"], payload["b"] = emb.a, emb.b
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(out, buf.getvalue())
    return len(folder)
