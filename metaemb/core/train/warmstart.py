"""Starting a run from an existing one, and continual learning with forgetting measured.

- `train.init_from = RUN_DIR | CHECKPOINT` loads the chosen parts of that run's weights before
  training (`train.init_parts`: "backbone" — features and backbone, e.g. a softmax network under a
  new GME head; "backbone+head" — the whole embedding network, e.g. fine-tuning on new data;
  "all" — also the classifier, which then needs the same classes). Every tensor is shape-checked
  first; a mismatch is one ConfigError naming the tensor, both shapes and the fix.
- Continual learning (new identities without forgetting the old ones): `train.rehearsal = K`
  mixes K stored samples of every old identity (from the init run's data) into the new data
  (`rehearsal_root`, a folder of hard links or copies in the cache), and `train.init_distill = λ`
  adds λ·(1 − cos(student, teacher)) towards the frozen init model. At the end of a warm-started
  run, `Forgetting` measures EER on old-identity trials (over the init run's data) and on
  new-identity trials (identities of this run's data the init run did not have), before (init
  model) and after (this run), prints the table and saves RUN/forgetting.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.train.callbacks import Callback

PARTS = {
    "backbone": ("features.", "backbone."),
    "backbone+head": ("features.", "backbone.", "head."),
}
PARTS["all"] = PARTS["backbone+head"]


def select_state(state: dict[str, Any], parts: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(model tensors, classifier tensors) of checkpoint `state` that `parts` loads."""
    if parts not in PARTS:
        raise ConfigError(f"train.init_parts must be one of {', '.join(PARTS)}, got '{parts}'.")
    model = {k: v for k, v in state["model"].items() if k.startswith(PARTS[parts])}
    classifier = dict(state.get("classifier") or {}) if parts == "all" else {}
    return model, classifier


def check_shapes(
    source: dict[str, Tensor], target: dict[str, Tensor], where: str, backbones: str = ""
) -> None:
    """Every source tensor exists in the target with the same shape, or one clear ConfigError
    whose fix depends on where they differ (`backbones`: "X there, Y here", for the message)."""
    missing = [k for k in source if k not in target]
    wrong = [k for k in source if k in target and tuple(source[k].shape) != tuple(target[k].shape)]
    if not missing and not wrong:
        return
    bad = wrong + missing
    if any(k.startswith(PARTS["backbone"]) for k in bad):
        which = f" ({backbones})" if backbones else ""
        fix = (f"the backbones differ{which}: use the same model.backbone, backbone and "
               "features options, or train without init_from")  # fmt: skip
    elif any(k.startswith("head.") for k in bad):
        fix = ("use train.init_parts=backbone to load the backbone only (e.g. under a new head "
               "or another model.dim)")  # fmt: skip
    else:  # the classifier: other identities or another number of them
        fix = "the classes differ: use train.init_parts=backbone+head"
    if wrong:
        k = wrong[0]
        detail = (
            f"'{k}' has shape {list(source[k].shape)} in {where} but {list(target[k].shape)} "
            f"in this model ({len(wrong)} tensor(s) differ)"
        )
    else:
        detail = f"'{missing[0]}' of {where} does not exist in this model ({len(missing)} missing)"
    raise ConfigError(f"train.init_from: {detail}; {fix}.")


class KDToInit:
    """Objective wrapper: the run's objective + λ·(1 − cos) towards the frozen init model."""

    def __init__(self, base: Any, weight: float) -> None:
        self.base, self.weight = base, float(weight)
        self.teacher_outputs: Tensor | None = None

    def teacher_kind(self) -> str:
        return "embedding"

    def __getattr__(self, name: str) -> Any:  # needs, batch, stats, set_epoch, … of the base
        return getattr(self.base, name)

    def __call__(self, embeddings: Tensor, labels: Tensor, classifier: Any) -> Tensor:
        teacher, self.teacher_outputs = self.teacher_outputs, None
        loss = self.base(embeddings, labels, classifier)
        if teacher is None:
            return loss
        cos = F.cosine_similarity(embeddings.float(), teacher.detach().float(), dim=1)
        kd = (1.0 - cos).mean()
        self.base.stats = {**self.base.stats, "kd_init": float(kd.detach())}
        return loss + self.weight * kd


class InitFrom(Callback):
    """Loads `train.init_from` weights after setup (a resume then restores last.pt over them)."""

    def __init__(self, source: str, parts: str, distill: float = 0.0) -> None:
        self.source, self.parts, self.distill = source, parts, distill

    def on_setup(self, trainer: Any) -> None:
        from metaemb.core.deploy.loading import load_run

        loaded = load_run(Path(self.source), "cpu")
        model_src, cls_src = select_state(loaded.state, self.parts)
        where = f"'{self.source}'"
        there, here = loaded.config.model.backbone, trainer.config.model.backbone
        backbones = f"'{there}' there, '{here}' here" if there != here else ""
        check_shapes(model_src, trainer.model.state_dict(), where, backbones)
        if self.parts == "all":
            if trainer.classifier is None or not cls_src:
                raise ConfigError(
                    f"train.init_parts=all loads the classifier, but {where} or this run has "
                    "none; use train.init_parts=backbone+head."
                )
            from metaemb.core.train.shard import slice_states

            # partial-fc under torchrun: this rank's rows of the whole centre matrix
            sliced = slice_states({"classifier": cls_src}, trainer.classifier, trainer.optimizer)
            cls_src = sliced["classifier"]
            there, here = loaded.config.train.objective, trainer.config.train.objective
            if there != here:  # another objective's classifier is another module
                objectives = f"objective '{there}' there, '{here}' here"
                try:
                    check_shapes(cls_src, trainer.classifier.state_dict(), where)
                except ConfigError as exc:
                    raise ConfigError(
                        f"{str(exc).split('; ')[0]}; the classifiers belong to different "
                        f"objectives ({objectives}) and init_parts=all needs the same one: use "
                        "train.init_parts=backbone+head."
                    ) from None
            check_shapes(cls_src, trainer.classifier.state_dict(), where)
            trainer.classifier.load_state_dict(cls_src)
        trainer.model.load_state_dict(model_src, strict=False)
        trainer.console.print(
            f"initialised {self.parts} from {where} ({len(model_src) + len(cls_src)} tensors)",
            markup=False,
        )
        ramp = trainer.config.options("objective").get("margin_warmup_epochs") or 0
        if ramp > 0:  # counted from this run's epoch 0: large-margin fine-tuning would not be
            trainer.console.print(
                f"[yellow]warning:[/] objective.margin_warmup_epochs = {ramp}: the margin ramps "
                f"from 0 again over this run's first {ramp} epochs, as for a model trained from "
                "scratch. For fine-tuning with a margin (large-margin fine-tuning) set "
                "objective.margin_warmup_epochs=0."
            )
        if self.distill > 0:
            self._attach_teacher(trainer, loaded)

    def _attach_teacher(self, trainer: Any, loaded: Any) -> None:
        from metaemb.core.train.model import Teacher

        if trainer.model.head.output != "point" or loaded.model.head.output != "point":
            raise ConfigError("train.init_distill needs point-embedding heads (old and new model).")
        step = getattr(trainer.step_module, "module", trainer.step_module)
        if step.teacher is not None:
            raise ConfigError("train.init_distill cannot be combined with train.teacher.")
        step.teacher = Teacher(loaded.model.to(trainer.device))
        step.objective = KDToInit(step.objective, self.distill)


# -- rehearsal ----------------------------------------------------------------------------------
def rehearsal_root(new_root: Path, init_from: str, k: int, cache: Path, seed: int = 0) -> Path:
    """A folder holding every sample of `new_root` plus up to `k` samples of each training
    identity of the init run (a seeded draw), as hard links (copies across file systems).

    Built once per (new root, init run, k, seed) in `cache`/rehearsal; old samples of an identity
    that also exists in the new data go into its folder, prefixed `rehearsal-`."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.train import validation

    if k < 1:
        raise ConfigError(f"train.rehearsal must be ≥ 1 old samples per identity, got {k}.")
    if not Path(new_root).is_dir():  # an input: said as without rehearsal, before it is listed
        what = "is a file, not a folder" if Path(new_root).exists() else "does not exist"
        raise DataError(f"data folder '{new_root}' {what}.")
    old = load_run(Path(init_from), "cpu", with_data=True)
    old_train, _ = validation.split(old.parts.folder, old.config)
    _warn_shared_names(Path(new_root), old_train.identities)
    key = json.dumps([str(Path(new_root).resolve()), str(Path(init_from).resolve()), k, seed])
    out = Path(cache) / "rehearsal" / hashlib.sha256(key.encode()).hexdigest()[:12]
    done = out / ".complete"
    if done.exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(Path(new_root), tmp)
    g = torch.Generator().manual_seed(seed)
    for _, idx in sorted(old_train.by_identity().items()):
        pick = torch.randperm(len(idx), generator=g)[:k].tolist()
        for i in sorted(pick):
            s = old_train.samples[idx[i]]
            src = Path(old_train.abspath(s))
            if not src.is_file():  # a Kaldi utterance id, a sample inside a shard
                shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(
                    f"train.rehearsal copies the init run's samples as files into "
                    f"<identity>/<file> folders, but its sample folder "
                    f"'{old.config.data.folder}' names '{s.path}', which is not a file "
                    f"('{src}'). Rehearse by hand: add stored samples of the old identities to "
                    "the new data in its own format."
                )
            dest = tmp / s.identity / ("rehearsal-" + s.path.replace("/", "_"))
            _link(src, dest)
    (tmp / ".complete").write_text(key + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def refuse_unmixed_rehearsal(config: Any) -> None:
    """`train.rehearsal` is mixed in by `metaemb train` (`rehearsal_root`); a Trainer run from
    Python with it set, on a data folder that is not such a mix, trained on the new data alone
    without a word."""
    if not (config.train.rehearsal and config.train.init_from):
        return
    from metaemb.core.data.pipeline import data_root

    root = data_root(config)  # the folder training will read
    mixed = (root / ".complete").is_file() and root.parent.name == "rehearsal"
    if not mixed:
        raise ConfigError(
            f"train.rehearsal = {config.train.rehearsal}, but the data folder '{root}' is not a "
            "rehearsal mix: `metaemb train` makes one. From Python, make it with "
            "metaemb.core.train.warmstart.rehearsal_root(data, init_from, k, cache) and set "
            "data.root to the folder it returns."
        )


def refuse_unread_rehearsal(folder: Any, root: Path, data_folder: str) -> None:
    """The new data's sample folder must read the stored samples rehearsal added as
    <identity>/rehearsal-<file>: a Kaldi folder, reading only its utt2spk, trained on the new
    identities alone, and its forgetting report looked like a rehearsed run's."""
    read = sum(Path(str(s.path)).name.startswith("rehearsal-") for s in folder.samples)
    if read == 0:
        raise DataError(
            f"train.rehearsal added the init run's stored samples to '{root}' as "
            f"<identity>/rehearsal-<file>, but sample folder '{data_folder}' reads none of "
            "them (it reads its own index, such as a Kaldi utt2spk): the run would train on the "
            "new identities alone. Rehearse with a folder of <identity>/<file> samples, or add "
            "stored samples of the old identities to the new data in its own format."
        )


def _warn_shared_names(new_root: Path, old_identities: list[str]) -> None:
    """Rehearsal joins the stored samples of an old identity to the new identity of the same
    name: right for new samples of known people, wrong for other people under reused names
    (two draws of a generator both start at id0000). Say so, naming them."""
    import warnings

    from metaemb.core.errors import first_few

    new = {p.name for p in new_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    shared = sorted(new & set(old_identities))
    if shared:
        warnings.warn(
            f"rehearsal: {len(shared)} of the {len(new)} identities of '{new_root}' have the names "
            f"of identities the init run trained on ({first_few(shared, 3)}); their stored "
            "samples join them as the same people. If they are other people, rename their "
            "folders.",
            stacklevel=3,
        )


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _link_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise DataError(f"data folder '{src}' does not exist.")
    for path in sorted(src.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(src).parts):
            _link(path, dest / path.relative_to(src))


# -- forgetting ---------------------------------------------------------------------------------
def _eer_on(model: Any, dataset: Any, folder: Any, config: Any, device: Any) -> dict[str, float]:
    """EER (and the rest of the validation report) of `model` on seeded trials over `folder`."""
    from metaemb.core.data.embed import extract
    from metaemb.core.eval.trial_generation import make_trials
    from metaemb.core.scoring.choice import default_scorer
    from metaemb.core.train import validation

    trials = make_trials(folder, n_target=config.eval.max_targets,
                         n_nontarget=config.eval.nontargets,
                         seed=validation.split_seed(config))  # fmt: skip
    indexed = validation.index_trials(trials, [s.path for s in folder.samples])
    model.eval()
    emb, _, _ = extract(model, dataset, device, batch_size=config.eval.batch_size, workers=0)
    scorer = default_scorer(model.head.output)
    scores = validation.score_indexed_trials(scorer, emb, indexed)
    rep = validation.report(scores, indexed.labels, config.eval.p_targets)
    return {"eer": float(rep["eer"]), "trials": len(trials)}


def measure_forgetting(trainer: Any, init_from: str) -> dict[str, Any]:
    """EER on old-identity and new-identity trials, for the init model (before) and this run's
    model (after)."""
    from metaemb.core.deploy.loading import load_run
    from metaemb.core.train import validation

    old = load_run(Path(init_from), str(trainer.device), with_data=True)
    old_train, _ = validation.split(old.parts.folder, old.config)
    known = set(old_train.identities) | set(old.parts.folder.identities)
    new_ids = [i for i in trainer.parts.folder.identities if i not in known]
    if len(new_ids) < 2:
        raise DataError(
            "forgetting needs at least two identities in this run's data that the init run did "
            f"not have; found {len(new_ids)} (identities are told apart by name: a folder named "
            "as one of the init run's identities counts as that identity)."
        )
    new_folder = trainer.parts.folder.subset(new_ids)
    cfg = trainer.config
    sets = {
        "old": (old_train, old.parts.dataset(old_train, train=False)),
        "new": (new_folder, trainer.parts.dataset(new_folder, train=False)),
    }
    out: dict[str, Any] = {"init_from": str(init_from), "identities": {}}
    with validation.isolated_rng(trainer.device):
        for which, model in (("before", old.model), ("after", trainer.model)):
            out[which] = {}
            for name, (folder, ds) in sets.items():
                out[which][name] = _eer_on(model, ds, folder, cfg, trainer.device)
                out["identities"][name] = folder.num_identities
    for name in sets:
        out.setdefault("change", {})[name] = out["after"][name]["eer"] - out["before"][name]["eer"]
    return out


class Forgetting(Callback):
    """At the end of a warm-started run: the forgetting table, printed and in forgetting.json."""

    def __init__(self, init_from: str) -> None:
        self.init_from = init_from

    def on_train_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        if not trainer.dist.main or trainer.start_epoch >= trainer.config.train.epochs:
            return
        from metaemb.core.files import atomic_write_text

        try:
            result = measure_forgetting(trainer, self.init_from)
        except DataError as exc:
            trainer.console.print(f"forgetting not measured: {exc}", markup=False)
            return
        atomic_write_text(trainer.dir / "forgetting.json", json.dumps(result, indent=2))
        b, a = result["before"], result["after"]
        trainer.console.print(
            "forgetting (EER before → after): old identities "
            f"{100 * b['old']['eer']:.2f}% → {100 * a['old']['eer']:.2f}%, new identities "
            f"{100 * b['new']['eer']:.2f}% → {100 * a['new']['eer']:.2f}% "
            f"({trainer.dir / 'forgetting.json'})",
            markup=False,
        )
