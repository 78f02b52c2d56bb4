"""Pictures of a run (PNG, the `plots` extra): training curves from metrics.jsonl, a 2-D map of
embeddings coloured by identity with chosen identities highlighted, and CMC curves.

The 2-D map uses t-SNE from scikit-learn when it is installed (`pip install 'metaemb[tsne]'`),
PCA otherwise (or when asked). Builders return matplotlib figures (tests inspect them);
`save_png` writes them atomically and closes them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from metaemb.core.errors import DataError, MetaembError
from metaemb.core.eval.figures import pyplot, save_png
from metaemb.core.runs import epoch_records

MAP_METHODS = ("auto", "tsne", "pca")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's metrics.jsonl (a torn last line is ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"'{run_dir}' has no metrics.jsonl: is it a run directory that trained?")
    out = epoch_records(path)  # lines that are not an epoch's record are passed over
    if not out:
        raise DataError(f"'{path}' holds no epoch records yet.")
    return out


def _values(records: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    """One quantity per epoch; missing or non-numeric (a hand edit) is a gap in the line."""
    out = []
    for r in records:
        v = r.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        out.append(scale * float(v) if ok else np.nan)
    return out


def training_figure(records: Sequence[dict[str, Any]]) -> Any:
    """Three panels per epoch: training loss; validation EER (%); minDCF at each P_target and
    Cllr (when present). One line per quantity."""
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (a_loss, a_eer, a_dcf) = plt.subplots(1, 3, figsize=(13, 3.8))
    a_loss.plot(epochs, _values(records, "loss"), marker="o", label="loss")
    a_loss.set_title("training loss")
    a_eer.plot(epochs, _values(records, "eer", 100.0), marker="o",
               color="tab:red", label="EER")  # fmt: skip
    a_eer.set_title("validation EER (%)")
    keys = sorted(k for k in records[0] if k.startswith("min_dcf_"))
    for key in keys:
        a_dcf.plot(epochs, _values(records, key), marker="o",
                   label=f"minDCF(P_tar={key[len('min_dcf_'):]})")  # fmt: skip
    if "cllr" in records[0]:
        a_dcf.plot(epochs, _values(records, "cllr"), marker="s", ls="--",
                   label="Cllr (bits)")  # fmt: skip
    a_dcf.set_title("validation minDCF and Cllr")
    for ax in (a_loss, a_eer, a_dcf):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    a_dcf.legend(fontsize=7)
    return fig


def training_curves(run_dir: Path, out: Path | None = None) -> Path:
    """training.png of a run (loss, EER, minDCF/Cllr per epoch)."""
    run_dir = Path(run_dir)
    return save_png(training_figure(read_metrics(run_dir)), out or run_dir / "training.png")


# -- 2-D maps -------------------------------------------------------------------------------------
def as_points(embeddings: Any) -> np.ndarray:
    """Point embeddings as they are; GMEs by their posterior means (b⁻¹a)."""
    if isinstance(embeddings, Tensor):
        return embeddings.detach().double().cpu().numpy()
    a, b = embeddings.a.double(), embeddings.b.double()
    if b.dim() == 2:
        return (a / b).cpu().numpy()
    import torch

    return torch.linalg.solve(b, a.unsqueeze(-1)).squeeze(-1).cpu().numpy()


def check_map_method(method: str) -> None:
    """Refuse an unknown map method, or t-SNE without scikit-learn, before any work."""
    if method not in MAP_METHODS:
        raise MetaembError(f"map method must be one of {', '.join(MAP_METHODS)}, got '{method}'.")
    if method == "tsne":
        try:
            import sklearn.manifold  # noqa: F401
        except ImportError:
            raise MetaembError(
                "t-SNE maps need scikit-learn: pip install 'metaemb[tsne]' (or use --method pca)."
            ) from None


def project_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """[N, d] → ([N, 2], method used): t-SNE on L2-normalised vectors, or PCA."""
    check_map_method(method)
    if len(x) < 3:
        raise DataError(f"a 2-D map needs at least 3 embeddings, got {len(x)}.")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            pass
        else:
            perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
            tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
            return tsne.fit_transform(x), "tsne"
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, "pca"


def check_highlight(highlight: Sequence[str], identities: Sequence[str]) -> None:
    """Every identity to highlight is among the embedded samples' identities."""
    unknown = sorted(set(highlight) - set(identities))
    if unknown:
        raise DataError(f"--highlight: identity '{unknown[0]}' is not among the embedded samples.")


def embedding_map_figure(
    coords: np.ndarray,
    identities: Sequence[str],
    highlight: Sequence[str] = (),
    title: str = "embeddings",
) -> Any:
    """One scatter of every sample coloured by identity; each highlighted identity gets its own
    larger, outlined scatter and a label at its centre (so: 1 + len(highlight) scatters)."""
    plt = pyplot()
    ids = np.asarray(identities)
    check_highlight(highlight, ids.tolist())
    names, codes = np.unique(ids, return_inverse=True)
    fig, ax = plt.subplots(figsize=(7, 6))
    rest = ~np.isin(ids, list(highlight))
    ax.scatter(coords[rest, 0], coords[rest, 1], c=codes[rest], cmap="tab20", s=12, alpha=0.55,
               vmin=0, vmax=max(1, len(names) - 1))  # fmt: skip
    for k, name in enumerate(highlight):
        sel = ids == name
        ax.scatter(coords[sel, 0], coords[sel, 1], s=60, marker="*", edgecolors="black",
                   linewidths=0.6, color=plt.get_cmap("tab10")(k % 10), label=name)  # fmt: skip
        cx, cy = coords[sel].mean(0)
        ax.annotate(name, (cx, cy), fontsize=8, weight="bold")
    if highlight:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}: {len(ids)} samples, {len(names)} identities")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def cmc_figure(curves: dict[str, Sequence[float]]) -> Any:
    """Rank-k identification accuracy, one line per named curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, acc in curves.items():
        ranks = np.arange(1, len(acc) + 1)
        ax.plot(ranks, 100 * np.asarray(acc), marker="o", markersize=3, label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("CMC")
    return fig


def _warn_other_model(checkpoint: str | None, run_dir: Path, embeddings: Path) -> None:
    """The map goes into this run's plots folder: say so when another run's model made it."""
    if not checkpoint:
        return
    source = Path(checkpoint).resolve()
    if (source if source.is_dir() else source.parent) != run_dir.resolve():
        warnings.warn(
            f"'{embeddings}' was embedded with '{checkpoint}', not with run '{run_dir}'; its map "
            "and CMC curve show that model.",
            stacklevel=3,
        )


def plot_run(
    run_dir: Path,
    embeddings: Path | None = None,
    highlight: Sequence[str] = (),
    method: str = "auto",
    out: Path | None = None,
    device: str = "auto",
    workers: int = 0,
) -> list[Path]:
    """Every picture of a run: training.png, and with `embeddings` (a data folder, embedded with
    the run's model, or a collection file from `metaemb embed`) embeddings_map.png and cmc.png."""
    from metaemb.core.eval.retrieval import Collection, collection_metrics
    from metaemb.core.files import written_together

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file; give the run folder" if run_dir.exists() else "does not exist"
        raise DataError(f"run folder '{run_dir}' {what}.")
    out = out or run_dir / "plots"
    curves = (run_dir / "metrics.jsonl").is_file()
    if embeddings is None and not curves:
        raise DataError(f"'{run_dir}' has no metrics.jsonl and no --embeddings were given.")
    coll = None
    if embeddings is not None:  # every option checked, every sample embedded, before drawing
        check_map_method(method)
        if embeddings.is_dir():
            from metaemb.core.eval.collect import embed_inputs

            coll = embed_inputs(run_dir, [embeddings], device=device, workers=workers)
        else:
            coll = Collection.load(embeddings)
            _warn_other_model(coll.meta.get("checkpoint"), run_dir, embeddings)
        check_highlight(highlight, coll.identities)
    made = []
    with written_together():  # all pictures, or (a failure half-way) none
        if curves:
            made.append(training_curves(run_dir, out / "training.png"))
        if coll is not None:
            coords, used = project_2d(as_points(coll.embeddings), method)
            title = f"{used.upper()} map"
            fig = embedding_map_figure(coords, coll.identities, highlight, title=title)
            made.append(save_png(fig, out / "embeddings_map.png"))
            result = collection_metrics(coll, max_rank=min(20, len(coll) - 1))
            cmc = cmc_figure({"leave-one-out": result["cmc"]})
            made.append(save_png(cmc, out / "cmc.png"))
    return made
