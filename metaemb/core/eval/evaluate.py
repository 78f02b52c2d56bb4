"""`metaemb evaluate`: a trained model + data + trials → metrics, scores, plots.

Every file in the trials (evaluation and calibration lists together) is embedded once, however
many trials it appears in. Without a trial list or protocol, the run's own validation trials are
regenerated, so the numbers match training's. Definitions and outputs: docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from metaemb.core.config import from_dict
from metaemb.core.config.toml_io import Options, option_table
from metaemb.core.data.pipeline import (
    Components,
    data_root,
    features_set_used,
    frontend_set_used,
    test_options_record,
)
from metaemb.core.deploy.loading import LoadedRun as Loaded
from metaemb.core.deploy.loading import load_run
from metaemb.core.errors import ConfigError, DataError, PluginError
from metaemb.core.eval import adapt_norm, figures, leakage, metrics, report
from metaemb.core.eval.embedded import Embedded, files_present
from metaemb.core.eval.held_out_calibration import fit_calibration, warn_overlap
from metaemb.core.eval.output_folder import (
    checkpoint_tag,
    claimed,
    default_out,
    drop_earlier_set,
    evaluated_model,
    result_name,
    variant,
    writing,
)
from metaemb.core.eval.scores_file import is_evaluation_metrics, is_scores_file, write_scores
from metaemb.core.eval.trial_checks import (
    check_both_classes,
    check_folds_fit,
    check_folds_hold_both,
    check_scorable,
    duplicates_warning,
    label_warning,
    mislabelled,
)
from metaemb.core.eval.trial_set import (
    TrialSet,
    parse_protocol_options,
    protocol_options,
    protocol_trials,
    read_protocol,
    trial_folds,
)
from metaemb.core.eval.trials import TrialList, read_trials
from metaemb.core.files import atomic_write_text, written_together
from metaemb.core.paths import (
    ensure_writable,
    ensure_writable_dir,
    refuse_inside,
    refuse_replacing_another_file,
)
from metaemb.core.plugin.interfaces import SampleFolder, Scorer, Trial
from metaemb.core.plugin.manager import registry
from metaemb.core.plugin.sample_folder import empty_folders_skipped
from metaemb.core.runs import skipped_paths
from metaemb.core.scoring.choice import choose_scorer
from metaemb.core.scoring.scorers import check_consistent
from metaemb.core.train import validation


def verification(scores: torch.Tensor, labels: torch.Tensor, p_targets: tuple) -> dict[str, Any]:
    """The verification report (metrics.verification_report) of labelled trial scores."""
    tar, non = scores[labels == 1].numpy(), scores[labels == 0].numpy()
    return metrics.verification_report(tar, non, p_targets=p_targets)


TAR_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
# metrics.json's tar_at_far_<far>: IJB-B/C quote 1e-6 … 1e-4 (reachable from a million
# non-target trials), smaller benchmarks 1e-4 … 1e-2


class Evaluation:
    """One evaluation: load model, read/regenerate trials, embed each file once, score, report.

    With `calibrate`, a linear logistic calibration (llr = w·s + b, minimising Cllr) is fitted on
    the scores of that held-out trial list and applied to the evaluation scores; the calibrated
    metrics are reported next to the raw ones. With `adapt`, a scorer that adapts without labels
    (`Scorer.adapt`, e.g. the speaker default's mean) sees every embedded file first, and a
    run with `eval.adapt_batchnorm` re-estimates its BatchNorm statistics on them (AdaBN).
    """

    def __init__(
        self,
        run: str | Path,
        data: str | Path | None = None,
        trials: str | Path | None = None,
        protocol: str | None = None,
        scorer: str | None = None,
        calibrate: str | Path | None = None,
        out: str | Path | None = None,
        device: str = "auto",
        workers: int = 2,
        console: Console | None = None,
        adapt: bool = True,
        protocol_options: Options = None,
        p_targets: list[float] | float | None = None,
        folder: str | None = None,
        folder_options: Options = None,
        folds: int | None = None,
        preloaded: Loaded | None = None,
        scorer_options: Options = None,
    ) -> None:
        def path(p: str | Path | None) -> Path | None:  # a notebook passes strings
            return None if p is None else Path(p)

        if folds is not None and (folds < 2 or trials is None):
            raise ConfigError("--folds K splits a --trials list into K contiguous folds for "
                              "k-fold accuracy: K ≥ 2, with --trials.")  # fmt: skip
        self.folds = folds
        self.preloaded = preloaded  # a reference model loaded without a run (`--reference`)
        self.folder = folder  # read --data with another sample folder than the run's
        self.folder_options = option_table(folder_options, "--folder-set", "folder_options")
        # options of the scorer for this evaluation (AS-norm's top_n, PLDA's lda_dim): the
        # back-end is refitted on the training samples, the network is not retrained
        self.scorer_set = option_table(scorer_options, "--scorer-set", "scorer_options")

        self.run_path, self.adapt = Path(run), adapt
        self.data, self.trials_path, self.protocol = path(data), path(trials), protocol
        self.protocol_options = parse_protocol_options(
            protocol, option_table(protocol_options, "--protocol-set", "protocol_options")
        )
        if isinstance(p_targets, (int, float)):  # one prior, from a notebook
            p_targets = [p_targets]
        bad = [p for p in p_targets or [] if not 0.0 < p < 1.0]  # nan fails too
        if bad:
            raise ConfigError(f"--p-target {bad[0]}: a target prior is in (0, 1), e.g. 0.01.")
        self.p_targets = tuple(dict.fromkeys(float(p) for p in p_targets or ()))  # no repeats
        self.scorer_name, self.calibrate_path = scorer, path(calibrate)
        self.out, self.device, self.workers = path(out), device, workers
        self.console = console or Console(emoji=False)

    # -- trials --------------------------------------------------------------------------
    def _trials(self, loaded: Loaded) -> TrialSet:
        cfg = loaded.config
        root = loaded.parts.root
        if self.protocol:
            plugin = registry("protocols").entry(self.protocol).plugin
            source = f"protocol '{self.protocol}' (plugin '{plugin}')"
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                listed = read_protocol(self.protocol, root, self.trials_path,
                                       self.protocol_options)  # fmt: skip
            for w in said:  # passed on; a trial file's duplicates are not warned about twice
                warnings.warn(w.message, w.category, stacklevel=2)
            warned = any(duplicates_warning(str(w.message)) for w in said)
            trials = protocol_trials(
                self.protocol,
                listed,
                loaded.parts.folder.root,  # a protocol's own folder may read a sub-folder
                warned=warned,
            )
            if getattr(trials, "path", ""):  # which file: a protocol may fall back to another
                source += f", list '{Path(trials.path).resolve()}'"  # from any folder alike
            return TrialSet(trials, self.protocol, source, trial_folds(trials, source))
        if self.trials_path:
            path = self.trials_path
            trials = read_trials(path, root=root)
            if self.folds:  # CFP-FP, CALFW, CPLFW: published as 10 contiguous blocks
                check_folds_fit(trials, self.folds, str(path))
                trials = TrialList(trials, folds=self.folds, path=str(path))
                check_folds_hold_both(trials, self.folds, str(path))
            return TrialSet(trials, path.stem, str(path), trial_folds(trials, str(path)))
        from metaemb.core.eval.measures import (
            data_changed,
            held_out_folder,
            is_other_folder,
            unseen_folder_trials,
        )

        if is_other_folder(loaded, self.data):  # a folder the run never saw: all its identities
            if self.preloaded is not None:  # a reference model: no run
                why = "which a reference model did not train on here"
                trials, source = unseen_folder_trials(loaded, self.console, why)
            else:
                trials, source = unseen_folder_trials(loaded, self.console)
            return TrialSet(trials, "all-identities", source)
        if (self.folder is not None or self.folder_options) and data_changed(loaded):
            why = "read as other files than in training (--folder/--folder-set)"
            trials, source = unseen_folder_trials(loaded, self.console, why)
            return TrialSet(trials, "all-identities", source)
        val = held_out_folder(loaded)
        trials = self._without_skipped(validation.validation_trials(val, cfg))
        return TrialSet(trials, "validation", "the run's validation trials", own_validation=True)

    def _without_skipped(self, trials: list[Trial]) -> list[Trial]:
        """The run's validation trials as training scored them: without the files it skipped
        as unreadable (its skipped.txt), which would otherwise stop the evaluation."""
        listed = self._run_dir() / "skipped.txt"
        if self.preloaded is not None or not listed.is_file():
            return trials
        skipped = skipped_paths(listed, {p for t in trials for p in (*t.enroll, t.test)})
        kept = [t for t in trials if t.test not in skipped and skipped.isdisjoint(t.enroll)]
        if len(kept) < len(trials):
            self.console.print(
                f"left out {len(trials) - len(kept)} validation trials of files the run skipped "
                f"in training (listed in {listed}), as training scored them",
                markup=False,
            )
        return kept

    def _training_identities_scored(self, loaded: Loaded, folder: Any, evals: TrialSet) -> int:
        """How many scored identities the run trained on (0 for its own validation trials),
        with a warning when there are any: their scores flatter the model."""
        if evals.name == "validation":
            return 0
        scored = leakage.identities_of(folder, leakage.trial_paths(evals.trials))
        return leakage.count_and_warn(loaded.state, scored, self.console, folder.subject_of)

    def _scorer(self, loaded: Loaded) -> Scorer:
        """The scorer named (else the run's own), checked as every command checks it; one
        that must be fitted and has no fitted state is fitted on the run's training split (a
        pretrained reference model has none: refused)."""
        fit = None if self.preloaded is not None else (lambda sc, name: self._fit(loaded, sc, name))
        run = ""
        if self.preloaded is not None:
            run = (
                f"the pretrained reference model '{self.run_path}' (no training samples to fit on)"
            )
        return choose_scorer(loaded, self.scorer_name, "verification", fit=fit, run=run)

    def _fit(self, loaded: Loaded, scorer: Scorer, name: str) -> None:
        """Fit `scorer` on the samples the run trained on (its training split)."""
        parts, train = self._run_training_split(loaded, name)
        own = loaded.config.eval.scorer
        over = f" over the run's scorer '{own}'" if loaded.normalising_own(name) else ""
        self.console.print(
            f"fitting scorer '{name}'{over} on the run's {len(train)} training samples "
            f"({parts.root}) …",
            markup=False,
        )
        emb = loaded.embed(train, None, self.workers, parts=parts)
        scorer.fit(emb, torch.tensor(train.labels))
        if not getattr(scorer, "fitted", True):  # a plugin scorer whose flag fit never sets
            raise PluginError(
                f"{_described(scorer, name)}: fit() ran on {len(train)} training embeddings but "
                "its `fitted` property is still False; `fitted` must report the state fit() "
                "sets."
            )

    def _without_a_fit(self, loaded: Loaded, name: str) -> str:
        """How to evaluate without fitting `name` again: without --scorer-set, the run's own
        scorer is saved fitted; another scorer than plain cosine, cosine instead."""
        own = loaded.config.eval.scorer
        if self.scorer_set and name == own:
            return (f"leave --scorer-set out: the run's scorer '{own}' is saved fitted as it "
                    "trained.")  # fmt: skip
        if name != own:
            return f"leave --scorer out: the run's scorer '{own}' is saved fitted."
        return "evaluate another copy of the data folder the run trained on."

    def _run_training_split(self, loaded: Loaded, name: str) -> tuple[Components, SampleFolder]:
        """The samples the run trained on, whatever `--data` points at: a backend fitted on the
        evaluation folder would learn its trial speakers (a leak that flatters every number)."""
        own = from_dict(loaded.state["config"])
        if self.data is None:
            parts = loaded.parts
        else:
            root = data_root(own, self.console)
            if not root.is_dir():
                raise DataError(
                    f"scorer '{name}' is fitted on the run's training samples, but its data "
                    f"folder '{root.resolve()}' is not there; restore it, or "
                    + self._without_a_fit(loaded, name)
                )
            parts = Components.build(own, root)
        from metaemb.core.eval.measures import training_folder

        return parts, training_folder(loaded, parts)

    def _layout(self) -> str | None:
        """The sample folder the protocol's data are laid out for (AgeDB's flat folder, a
        VGGFace2 root holding test/), registered with it as `folder=`; None: the run's."""
        if self.folder is not None:
            return self.folder
        if not self.protocol:
            return None
        return registry("protocols").entry(self.protocol).info.get("folder")

    # -- run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate: print the metrics table (to `console`), write metrics.json, scores.txt and
        the plots to the output folder (`out`, else eval-<trials> inside the run) and return
        the metrics as metrics.json holds them."""
        with contextlib.ExitStack() as claims:  # a default folder is claimed until written
            return self._run(claims)

    def _run(self, claims: contextlib.ExitStack) -> dict[str, Any]:
        if self.out is not None:
            ensure_writable_dir(self.out, "evaluation output folder")
        listed = self.trials_path is not None or self.protocol is not None
        with empty_folders_skipped() if listed else contextlib.nullcontext():
            loaded = self.preloaded or load_run(  # a reference: preloaded
                self.run_path,
                self.device,
                data=self.data,
                with_data=True,
                folder=self._layout(),
                folder_options=self.folder_options,
            )
        cfg = loaded.config
        loaded.scorer_set = self.scorer_set
        p_targets = self.p_targets or tuple(float(p) for p in cfg.eval.p_targets)
        folder = loaded.parts.folder
        evals = self._trials(loaded)
        # A list without any label (a challenge's) is scored, not measured: scores.txt only.
        unlabelled = all(t.label is None for t in evals.trials)
        labels = torch.zeros(0) if unlabelled else evals.labels()
        if not unlabelled:
            files_present(folder, [evals])  # a missing file is the first thing to fix
            check_both_classes(labels, evals.source)
        shared = self._training_identities_scored(loaded, folder, evals)
        if evals.name != "validation" and not unlabelled:  # generated lists agree by construction
            message = label_warning(mislabelled(folder, evals.trials), len(labels))
            if message:
                self.console.print(f"[yellow]warning:[/] {escape(message)}")
        frontend_set = frontend_set_used()
        suffix = variant(self.adapt, self.folder, self.folder_options, self.p_targets,
                         self.calibrate_path, self.folds, self.protocol_options,
                         checkpoint_tag(self.run_path), self.scorer_set)  # fmt: skip
        features_set = features_set_used(cfg)  # what differs from the run's own
        name = result_name(evals.name, self.scorer_name, cfg.eval.scorer, frontend_set, suffix,
                           features_set)  # fmt: skip
        data_root = str(Path(loaded.parts.root).resolve())
        calibration = str(self.calibrate_path.resolve()) if self.calibrate_path else None
        trials_file = str(self.trials_path.resolve()) if self.trials_path else ""
        out = self.out or claims.enter_context(
            claimed(
                default_out(self._run_dir(), name, self.data),
                data_root,
                evals.source,
                calibration,
                trials_file,
            )
        )
        self._check_outputs(out, loaded.parts.root)  # before anything is embedded
        if self.out:  # one writer: two sets' renames interleaved into a mixed set
            claims.enter_context(writing(out))
        check_scorable(evals.trials, f"{evals.source} ({loaded.parts.root})")
        cal = None
        if self.calibrate_path:
            path = self.calibrate_path
            cal = TrialSet(read_trials(path, root=loaded.parts.root), path.stem, str(path))
            check_both_classes(cal.labels(), cal.source)  # before embedding anything
            warn_overlap(cal, evals)
        scorer = self._scorer(loaded)
        sets = [evals] + ([cal] if cal else [])
        # The run's own validation trials score as validation did (training statistics), so
        # `evaluate RUN` reproduces the numbers training reported.
        renorm = self.adapt and cfg.eval.adapt_batchnorm and not evals.own_validation
        embedded = Embedded(loaded, folder, sets, self.workers, adapt_batchnorm=renorm)
        if embedded.norm_too_few:
            self.console.print(
                f"note: BatchNorm statistics not re-estimated (AdaBN): the trials name "
                f"{len(embedded.pos)} files, fewer than {adapt_norm.MIN_FILES}; so few files "
                "(and identities) give statistics that hurt more often than they help.",
                markup=False,
            )
        validation.warn_if_collapsed(embedded.emb, "evaluated")  # scores all but tied
        adapted = self.adapt and scorer.adapt(embedded.emb)  # label-free, every file scored
        check_consistent(
            scorer, embedded.emb, _described(scorer, self.scorer_name or cfg.eval.scorer)
        )
        scores = embedded.score(scorer, evals.trials)
        result: dict[str, Any] = {
            "trials": evals.name,
            **evaluated_model(loaded),
            "trials_source": evals.source,
            "data_root": data_root,
            **({"trials_file": trials_file} if trials_file else {}),
            **({"calibration_source": calibration} if calibration else {}),
            "scorer": self.scorer_name or cfg.eval.scorer,
            "scorer_options": loaded.recorded_scorer_options(self.scorer_name),
            "adapted_on": len(embedded.pos) if adapted else 0,
            "batchnorm_adapted_on": embedded.norm_adapted_on,
            "training_identities_scored": shared,
            **({"frontend_set": frontend_set} if frontend_set else {}),
            **({"features_set": features_set} if features_set else {}),
            **test_options_record(loaded.model),
            **({"folder": self.folder} if self.folder else {}),
            **({"folder_options": self.folder_options} if self.folder_options else {}),
        }
        if unlabelled:
            return self._scores_only(out, evals, scores, embedded, scorer, cal, folder, result)
        label = _described(scorer, self.scorer_name or cfg.eval.scorer)
        metrics.warn_if_reversed(label, scores.numpy(), labels.numpy())
        result.update(p_targets=list(p_targets), **verification(scores, labels, p_targets))
        if self.protocol:  # a generated list is only comparable under the same options
            result["protocol_options"] = protocol_options(self.protocol, self.protocol_options)
        tar, non = scores[labels == 1].numpy(), scores[labels == 0].numpy()
        for far in TAR_FARS:  # the face benchmarks' operating points
            result[f"tar_at_far_{far:g}"] = metrics.tar_at_far(tar, non, far)
        if evals.folds:
            mean, std, _ = metrics.kfold_accuracy(scores.numpy(), labels.numpy(), evals.folds)
            result.update(folds=evals.folds, accuracy=mean, accuracy_std=std)
        out.mkdir(parents=True, exist_ok=True)
        calibrated = self._calibrated(scores, embedded, scorer, cal, evals, folder, result)
        if calibrated is not None:
            result["calibrated"] = verification(calibrated, labels, p_targets)
        with written_together():  # all new, or (a full disk) all as they were; metrics last
            drop_earlier_set(out)
            if calibrated is not None:
                write_scores(out / "scores_calibrated.txt", evals.trials, calibrated.tolist())
            write_scores(out / "scores.txt", evals.trials, scores.tolist())
            self._plots(out, scores, calibrated, labels, result)
            atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True))
        report.print_result(self.console, result)
        self.console.print(f"wrote {out / 'metrics.json'} and {out / 'scores.txt'}", markup=False)
        return result

    def _calibrated(
        self,
        scores: torch.Tensor,
        embedded: Embedded,
        scorer: Any,
        cal: TrialSet | None,
        evals: TrialSet,
        folder: SampleFolder,
        result: dict[str, Any],
    ) -> torch.Tensor | None:
        """The scores calibrated on the --calibrate list (its summary added to `result`), or
        None without one."""
        if cal is None:
            return None
        calibration = fit_calibration(embedded, scorer, cal, evals, folder, self.console)
        result["calibration"] = calibration.summary
        return calibration(scores)

    def _scores_only(
        self,
        out: Path,
        evals: TrialSet,
        scores: torch.Tensor,
        embedded: Embedded,
        scorer: Any,
        cal: TrialSet | None,
        folder: SampleFolder,
        result: dict[str, Any],
    ) -> dict[str, Any]:
        """An unlabelled list (a challenge's trials): its scores (and calibrated scores, with
        --calibrate) are written, as a submission needs them; there is nothing to measure."""
        result.update(labelled=False, n_trials=len(evals.trials))
        out.mkdir(parents=True, exist_ok=True)
        calibrated = self._calibrated(scores, embedded, scorer, cal, evals, folder, result)
        with written_together():
            drop_earlier_set(out)  # an earlier labelled list's plots
            if calibrated is not None:
                write_scores(out / "scores_calibrated.txt", evals.trials, calibrated.tolist())
            write_scores(out / "scores.txt", evals.trials, scores.tolist())
            atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True))
        self.console.print(
            f"{len(evals.trials)} unlabelled trials scored (no metrics without labels); wrote "
            f"{out / 'scores.txt'}",
            markup=False,
        )
        return result

    def _check_outputs(self, out: Path, root: Path) -> None:
        """Every output writable, none inside the data folder read (`root`: the run's own when
        no --data is given), and none replacing a file metaemb did not write (another
        toolkit's scores.txt, a metrics.json of one's own)."""
        ensure_writable_dir(out, "evaluation output folder")
        refuse_inside(out, self.data or root, "evaluation output folder")
        names = ["metrics.json", "scores.txt"]
        names += ["scores_calibrated.txt"] if self.calibrate_path else []
        for name in names:
            ensure_writable(out / name, "evaluation output file")
            ours = is_evaluation_metrics if name == "metrics.json" else is_scores_file
            refuse_replacing_another_file(out / name, "evaluation output file", ours,
                                          "metaemb evaluate")  # fmt: skip
        plots = ["det.png", "roc.png", "scores.png"] + (
            ["scores_calibrated.png"] if self.calibrate_path else []
        )
        for name in plots:  # a PNG that metaemb did not draw (a photo) is never replaced
            ensure_writable(out / name, "plot")

    def _run_dir(self) -> Path:
        """The run's folder; for a `--reference` model, `reference-NAME/` (made when written)."""
        if self.run_path.is_dir() or self.preloaded is not None:
            return self.run_path
        return self.run_path.parent

    def _plots(
        self,
        out: Path,
        scores: torch.Tensor,
        calibrated: torch.Tensor | None,
        labels: torch.Tensor,
        result: dict[str, Any],
    ) -> None:
        tar, non = scores[labels == 1].numpy(), scores[labels == 0].numpy()
        try:
            made = report.verification_plots(out, tar, non, result)
            if calibrated is not None:
                made.append(
                    report.histogram_plot(
                        out / "scores_calibrated.png",
                        calibrated[labels == 1].numpy(),
                        calibrated[labels == 0].numpy(),
                        title="calibrated score (LLR) distributions",
                    )
                )
        except figures.PlotsUnavailable as exc:
            self.console.print(f"[yellow]no plots:[/] {escape(str(exc))}")
            return
        for p in made:
            self.console.print(f"plot: {p}", markup=False)


def _described(scorer: Any, name: str) -> str:
    return getattr(scorer, "_metaemb_component", None) or f"scorer '{name}'"
