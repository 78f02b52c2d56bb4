"""Loading a trained run for inference: the one loader every caller uses.

`load_run(path)` takes a run directory (its best.pt, else last.pt) or a checkpoint file, loads it
safely (weights_only), rebuilds the embedding model from the saved config and puts it in eval mode
on the chosen device. Evaluation, embedding, export, galleries and distillation teachers all load
through it, so they agree on what a checkpoint means. With `with_data` (or `data`), it also builds
the run's data pipeline (sample folder, frontend, features) for embedding samples.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaemb.core.checkpoints import load_checkpoint
from metaemb.core.config import Config, from_dict
from metaemb.core.config.chain import check_scorer
from metaemb.core.config.toml_io import Options, option_table
from metaemb.core.config.trained_options import pin_trained_options
from metaemb.core.data.embed import extract, non_finite_rows, row_files
from metaemb.core.data.pipeline import Components, apply_features_set, build_model, data_root
from metaemb.core.deploy.run_data import plain_folder, read_with, rebase_data_paths
from metaemb.core.deploy.run_drift import warn_changed_inputs, warn_edited_config, warn_unfinished
from metaemb.core.errors import DataError, DatasetError, MetaembError, first_few
from metaemb.core.paths import data_path_exists
from metaemb.core.plugin.components import build, full_options, validate_options
from metaemb.core.plugin.interfaces import SampleFolder, Scorer
from metaemb.core.train.device import pick_device
from metaemb.core.train.model import EmbeddingModel


def find_checkpoint(path: Path) -> Path:
    """A run directory resolves to its best.pt (or last.pt); a file is used as it is."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise MetaembError(f"run directory '{path}' has no best.pt or last.pt: was it trained?")
    if not path.exists():
        from metaemb.core.paths import refuse_looping_link

        refuse_looping_link(path, "run")
        raise MetaembError(
            f"'{path}' does not exist; give a run directory (runs/<modality>/<name>-<hash>) or "
            "a checkpoint file (its best.pt)."
        )
    return path


@dataclass
class LoadedRun:
    """A trained model rebuilt from its checkpoint (eval mode), its config and saved state."""

    path: Path  # the checkpoint file
    config: Config
    state: dict[str, Any]
    model: EmbeddingModel
    device: torch.device
    data: Components | None = None
    #: options set over the scorer's for one command (`evaluate --scorer-set top_n=100`): the
    #: back-end tuned without retraining; the run's fitted state then no longer applies
    scorer_set: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def weights_digest(self) -> str:
        """The digest of the model's weights (hashed once: large models take a while)."""
        from metaemb.core.deploy.stamp import model_digest

        return model_digest(self.state["model"])

    @property
    def digest(self) -> str:
        """Which embeddings the model makes (`stamp.embedding_digest`: its weights, and a flip
        test when one is set, now: switching it on later changes it): which model a gallery or
        an embeddings file belongs to."""
        from metaemb.core.deploy.stamp import embedding_digest

        return embedding_digest(self.weights_digest, self.model.features)

    @property
    def parts(self) -> Components:
        """The run's data pipeline (load with `with_data=True` or `data=`)."""
        if self.data is None:
            raise MetaembError("this run was loaded without its data pipeline (with_data=False).")
        return self.data

    def embed(
        self,
        folder: SampleFolder,
        indices: list[int] | None = None,
        workers: int = 0,
        parts: Components | None = None,
    ) -> Any:
        """Embeddings of `folder.samples[indices]` (all when None), in that order, through the
        pipeline of `parts` (default: this run's); a sample that cannot be read is an error
        naming it."""
        out, _, bad = self.embed_skipping(folder, indices, workers, parts, skip=False)
        if bad:
            names = first_few(b.path for b in bad)
            raise DataError(_needs_every_file(f"{len(bad)} sample(s) could not be read: {names}."))
        return out

    def embed_skipping(
        self,
        folder: SampleFolder,
        indices: list[int] | None,
        workers: int,
        parts: Components | None = None,
        skip: bool = True,
    ) -> tuple[Any, Tensor, list[Any]]:
        """(embeddings, the folder indices they belong to, the samples skipped): with `skip`,
        a sample that cannot be read is left out (`embed --on-bad-sample skip`)."""
        ds = (parts or self.parts).dataset(folder, train=False)
        ds.on_bad_sample = "skip" if skip else "error"
        if indices is not None:
            ds.indices = list(indices)
        try:
            out, kept, bad = extract(
                self.model, ds, self.device, batch_size=self.config.eval.batch_size,
                workers=workers,
            )  # fmt: skip
        except DatasetError:
            raise  # a file of the whole dataset (a landmark table): no sample to fix or skip
        except DataError as exc:
            raise type(exc)(_needs_every_file(str(exc), skip_option=skip)) from None
        rows = non_finite_rows(out)
        if rows:  # never hand NaN embeddings on to a file, a gallery or a score
            raise DataError(
                f"the model gives NaN or infinite embeddings for {len(rows)} sample(s) "
                f"({row_files(folder, kept.tolist(), rows)}) under '{folder.root}'; its weights or those "
                "inputs are not finite (a diverged training?). Nothing was written."
            )
        return out, kept, bad

    def adapt_batchnorm(self, folder: SampleFolder, indices: list[int], workers: int) -> int:
        """Re-estimate the model's BatchNorm statistics on `folder.samples[indices]` without
        labels (AdaBN, in memory only: the checkpoint is untouched); returns the files used."""
        from metaemb.core.data.loaders import make_loader
        from metaemb.core.eval.adapt_norm import adapt_batchnorm, spread

        ds = self.parts.dataset(folder, train=False)
        ds.indices = spread(indices)
        batches = [(b.inputs, b.lengths) for b in make_loader(ds, workers, 1) if len(b)]
        return adapt_batchnorm(self.model, batches, self.device)

    def classifier(self) -> nn.Module | None:
        """The training classifier (class weights) saved with the run, rebuilt, or None."""
        saved = self.state.get("classifier")
        if not saved:
            return None
        cfg = self.config
        objective = build("objectives", cfg.train.objective, cfg.options("objective"))
        classifier = objective.build_classifier(cfg.model.dim, self.state["num_classes"])
        if classifier is None:
            return None
        classifier.load_state_dict(saved)
        return classifier.to(self.device).eval()

    def scorer(self, name: str | None = None) -> tuple[Scorer, bool]:
        """Scorer `name` (default: the run's) → (scorer, still_needs_fit). The run's own scorer
        gets its options and, when fitted during training (PLDA, s-norm), its saved state."""
        cfg = self.config
        name = name or cfg.eval.scorer
        opts = self.scorer_options(name)
        check_scorer(cfg, name, opts)  # a GME scorer for a point-embedding run is refused here
        scorer = build("scorers", name, validate_options("scorers", name, opts, "scorer"))
        if not scorer.requires_fit:
            return scorer, False
        saved = self.state.get("scorer") or {}
        if name == cfg.eval.scorer and saved and not self.scorer_set:
            scorer.load_state_dict(saved)
            return scorer, False
        return scorer, True

    def scorer_options(self, name: str) -> dict[str, Any]:
        """The options scorer `name` gets from this run: its own scorer's, or for a scorer
        that normalises a base (`normalising_own`) the run's own as that base; {} else."""
        cfg = self.config
        opts = cfg.options("scorer") if name == cfg.eval.scorer else self.normalising_own(name)
        if not self.scorer_set:
            return opts
        _refuse_unknown_set(name, self.scorer_set)
        return merged_options(opts, self.scorer_set)

    def recorded_scorer_options(self, name: str | None = None) -> dict[str, Any]:
        """`scorer_options` with every default spelled out (`{}` would mean "this version's
        defaults", unsaid): what metrics.json records for scorer `name` (default: the run's)."""
        name = name or self.config.eval.scorer
        return full_options("scorers", name, self.scorer_options(name))

    def normalising_own(self, name: str) -> dict[str, Any]:
        """Options of scorer `name` when it normalises a base scorer (`--scorer asnorm`): the
        run's own point scorer with its options as the base (a default speaker run's cosine
        with WCCN and adaptation), so AS-norm goes on top of what the run scores with, as in
        the field's recipes; {} when `name` takes no base or the run's scorer cannot be one."""
        from metaemb.core.plugin.manager import registry
        from metaemb.core.plugin.options import parts_of

        cfg = self.config
        own = cfg.eval.scorer
        scorers = registry("scorers")
        if "base" not in parts_of(scorers.get(name)) or "base" in parts_of(scorers.get(own)):
            return {}
        # every option of the run's scorer, its defaults too: a base table naming `cosine`
        # alone is filled from the normalisers' default base (mean-subtracted cosine)
        opts = {"base": {"name": own, **full_options("scorers", own, cfg.options("scorer"))}}
        try:
            return validate_options("scorers", name, opts, "scorer")
        except MetaembError:  # e.g. a GME run's scorer is no point scorer: the default base
            return {}


def _run_config(state: dict[str, Any], ckpt: Path) -> Config:
    """The checkpoint's configuration; when a component it names is not registered here, the
    plugin the run was trained with is named (it is not installed, or is disabled)."""
    from metaemb.core.errors import ConfigError, UnknownComponentError
    from metaemb.core.plugin.manager import state as plugin_state

    try:
        cfg = from_dict(state["config"])
    except (UnknownComponentError, ConfigError) as exc:
        installed = set(plugin_state().versions)
        recorded = state.get("plugins") if isinstance(state.get("plugins"), dict) else {}
        missing = sorted({str(v) for v in recorded.values() if str(v).split()[0] not in installed})
        if not missing:
            raise
        raise type(exc)(
            f"{exc} The run '{ckpt.parent}' was trained with plugin {', '.join(missing)}, "
            "which is not installed here (or is disabled): install it to use the run."
        ) from None
    pin_trained_options(cfg, state.get("trained_options"), f"the run '{ckpt.parent}'")
    return cfg


#: the hint a reader adds for training, where `--on-bad-sample skip` exists
_SKIP_HINT = re.compile(
    r"\s*\(with\s+on_bad_sample\s*=\s*'skip'\s+it\s+is\s+skipped"
    r"(?::\s+train\s+--on-bad-sample\s+skip)?\)\.?"
)


#: a reader's last sentence saying what to do ("Replace or remove the file", "Add its row to
#: the table or remove the file"): fixing the file itself is said in one common wording
_REMEDY = re.compile(r"\.? *([A-Z][^.]*? or remove (?:the \w+|it))$")


def _needs_every_file(message: str, skip_option: bool = False) -> str:
    """A bad sample met after training (embed, evaluate, enroll, identify): the training-only
    `on_bad_sample` hint is replaced by what to do here."""
    message = _SKIP_HINT.sub("", message).rstrip().rstrip(".")
    remedy = "Fix or remove the file"
    found = _REMEDY.search(message)
    if found:  # said below; a remedy other than fixing the file itself is kept
        message = message[: found.start()]
        if found.group(1).split()[0] not in ("Replace", "Fix", "Re-encode"):
            remedy = found.group(1)
    if skip_option:
        return message + "."
    return (f"{message}. {remedy}: `train` and `embed` can leave such files out with "
            "--on-bad-sample skip (skip_bad=True in embed_inputs); `evaluate`, `enroll` and "
            "`identify` need every file they "
            "are given.")  # fmt: skip


def load_run(
    path: Path,
    device: str = "cpu",
    *,
    data: Path | None = None,
    with_data: bool = False,
    folder: str | None = None,
    folder_options: Options = None,
) -> LoadedRun:
    """Load a run directory or checkpoint; `data` (a data root) or `with_data` (the run's own
    root) also builds the data pipeline for embedding samples, reading the data with sample
    folder `folder` (at its defaults) instead of the run's when given (a protocol's layout, a
    Kaldi data directory scored by a run of plain folders), and `folder_options` over the
    folder's options (which files a folder holds, e.g. a plugin's forgeries kept out of
    training but scored)."""
    ckpt = find_checkpoint(Path(path))
    state = load_checkpoint(ckpt)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise MetaembError(f"'{ckpt}' is not a metaemb checkpoint (no 'config' or 'model' entry).")
    cfg = _run_config(state, ckpt)
    if Path(path).is_dir():
        warn_edited_config(Path(path), ckpt, state["config"])
    if (ckpt.parent / "metrics.jsonl").is_file():  # a run folder's checkpoint, however given
        warn_unfinished(ckpt.parent, ckpt, state, cfg.train.epochs)
    parts = None
    if data is not None or with_data:
        if data is not None:
            from metaemb.core.paths import refuse_looping_link

            refuse_looping_link(data)
            rebase_data_paths(cfg, Path(data))
            cfg.data.root, cfg.data.root_absolute = str(data), ""
        read_with(cfg, folder, option_table(folder_options, "--folder-set", "folder_options"))
        root = data_root(cfg)
        if data is None and cfg.data.root and not data_path_exists(root):
            saved = cfg.data.root_absolute or cfg.data.root
            if cfg.train.rehearsal and cfg.train.init_from:
                raise DataError(
                    f"the data folder the run trained on, '{saved}', does not exist: it is the "
                    "rehearsal mix (new data + old samples, train.rehearsal) metaemb built in its "
                    "cache, which was cleared. Re-run the `metaemb train` command that made the "
                    "run: it rebuilds the same mix and finds the run complete. Or score other "
                    "data with --data DIR (and --trials)."
                )
            raise DataError(
                f"the data folder the run trained on, '{saved}', does not exist (moved or "
                "deleted?); point at it with --data DIR (data=… from Python)."
            )
        try:
            parts = Components.build(cfg, root)
        except DataError as exc:
            from metaemb.core.data.pipeline import folder_set_used

            chosen = folder_set_used()[0] is not None  # the user's --folder: its own error
            if data is None or chosen or not plain_folder(cfg, f"'{data}'"):
                raise
            try:  # not in the run's container format: plain files of the same samples?
                parts = Components.build(cfg, root)
            except MetaembError as plain_exc:  # neither: say why as plain files (as warned)
                raise type(plain_exc)(
                    f"{plain_exc} (Nor is it in the run's own layout: {exc})"
                ) from None
        model = parts.model
    else:
        model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # missing, extra or resized tensors
        first = str(exc).strip().splitlines()
        raise MetaembError(
            f"'{ckpt}' does not fit the model its configuration builds (a damaged checkpoint, or "
            f"one saved by a plugin version with another architecture): "
            f"{' '.join(line.strip() for line in first[:3])[:400]}"
        ) from None
    warn_changed_inputs(ckpt, state.get("input_spec"), model.features, cfg)
    apply_features_set(model.features, cfg.model.features)
    dev = pick_device(device)
    model.to(dev).eval()
    return LoadedRun(ckpt, cfg, state, model, dev, parts)


def _refuse_unknown_set(name: str, over: dict[str, Any]) -> None:
    """Name a `--scorer-set` key scorer `name` has no option for as the user typed it (not as a
    config key `scorer.KEY`, which they never wrote)."""
    from metaemb.core.errors import ConfigError, suggest
    from metaemb.core.plugin.manager import registry
    from metaemb.core.plugin.options import options_of

    known = options_of(registry("scorers").get(name))
    for key in over:
        head = key.split(".")[0]
        if head not in known:
            valid = ", ".join(sorted(known)) or "(none)"
            raise ConfigError(
                f"--scorer-set {key}: scorer '{name}' has no option '{head}';"
                f"{suggest(head, known)} its options: {valid}."
            )


def merged_options(options: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`options` with `over` set on top, a dotted key (`base.wccn`) into its table."""
    import copy

    from metaemb.core.errors import ConfigError

    out = copy.deepcopy(options)
    for key, value in over.items():
        *tables, last = key.split(".")
        node = out
        for t in tables:
            node = node.setdefault(t, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--scorer-set {key}: '{t}' is an option, not a table of them.")
        node[last] = value
    return out
