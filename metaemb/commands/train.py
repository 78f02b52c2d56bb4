"""`metaemb train` and `metaemb distill`: resolve the configuration, announce related runs, train
under the run's lock and log, and say how an interrupted run resumes."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from metaemb.commands.console import console_options, make_console
from metaemb.commands.options import DEFAULT_MODALITY, Device
from metaemb.commands.signals import Terminated, stopped_by_scheduler, worker_signal

err_console = make_console(stderr=True)


def train(
    modality: Annotated[
        str | None,
        typer.Option(
            help="face, speaker, or any plugin's modality \\[default: the --config "
            "file's modality, else face]"
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="<identity>/<sample> folder; default: built-in demo data")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="dotted override, e.g. train.epochs=3")
    ] = None,
    runs: Annotated[Path, typer.Option(help="root of run directories")] = Path("runs"),
    device: Device = "auto",
    fresh: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
    workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (default: data.workers)", min=0)
    ] = None,
    on_bad_sample: Annotated[
        str | None, typer.Option(help="error (default) or skip: skipped files go to skipped.txt")
    ] = None,
    tensorboard: Annotated[
        bool, typer.Option(help="log to RUN/tensorboard (= --set train.tensorboard=true)")
    ] = False,
) -> None:
    """Train an embedding network (resumes the run with the same configuration)."""
    from metaemb.core.config import resolve
    from metaemb.core.paths import ensure_writable_dir, recordable, refuse_inside
    from metaemb.core.train.engine import Trainer

    ensure_writable_dir(runs, "runs folder")
    refuse_inside(runs, data, "runs folder")  # its run folders would be scanned as identities
    sets = list(set_ or [])
    recordable(runs, "runs folder")
    if data is not None:
        from metaemb.core.paths import refuse_looping_link

        refuse_looping_link(data)
        recordable(data, "data folder")
        sets.append(f"data.root={json.dumps(str(data))}")
        if not data.is_absolute():
            sets.append(f"data.root_absolute={json.dumps(str(data.resolve()))}")
    if on_bad_sample is not None:
        if on_bad_sample not in ("error", "skip"):  # the option's name, not the --set it makes
            from metaemb.core.errors import ConfigError

            raise ConfigError(f"--on-bad-sample must be error or skip, got '{on_bad_sample}'.")
        sets.append(f"data.on_bad_sample={json.dumps(on_bad_sample)}")
    if tensorboard:
        sets.append("train.tensorboard=true")
    if modality is None:  # a saved run's config.toml says which modality it trains
        from metaemb.core.config.toml_io import load_toml

        saved = load_toml(config).get("modality", DEFAULT_MODALITY) if config else None
        modality = str(saved or DEFAULT_MODALITY)
    cfg = resolve(modality, config, sets)
    from metaemb.core.runs import related_runs, run_dir

    earlier, twin, other_epochs = related_runs(runs, cfg)
    if other_epochs is not None:
        folder, epochs = other_epochs
        err_console.print(
            f"note: {folder} holds this configuration with train.epochs={epochs}; train.epochs "
            "is part of a run (its learning-rate schedule follows it), so this one starts "
            f"from scratch in {run_dir(runs, cfg)}. To continue from that run's weights "
            f"instead: --set train.init_from={folder} --set train.init_parts=all.",
            markup=False,
        )
    if twin is not None:
        err_console.print(
            f"note: {twin[0]} trained this same configuration on the same data folder, given as "
            f"--data {twin[1]}; runs are keyed by --data as typed, so this one starts in "
            f"{run_dir(runs, cfg)}. Stop it and pass --data {twin[1]} to resume that run instead.",
            markup=False,
        )
    if earlier is not None:  # the run hash of an earlier version covered options differently
        err_console.print(
            f"note: {earlier} holds this same configuration under another run hash (an earlier "
            "metaemb hashed it otherwise, or a plugin added an option it does not list in "
            f"hash_neutral); this run starts in {run_dir(runs, cfg)}. `metaemb evaluate "
            f"{earlier}` still evaluates the earlier run.",
            markup=False,
        )
    from metaemb.core.errors import MetaembError
    from metaemb.core.locks import RunInProgress
    from metaemb.core.train.runlog import LoggingConsole
    from metaemb.core.train.workflows import config_callbacks

    if cfg.train.rehearsal and cfg.train.init_from:  # old samples mixed into the new data
        from metaemb.core.data.pipeline import cache_dir, data_root
        from metaemb.core.train.warmstart import rehearsal_root

        root = rehearsal_root(data_root(cfg), cfg.train.init_from, cfg.train.rehearsal,
                              cache_dir(cfg), cfg.train.seed)  # fmt: skip
        cfg.data.root, cfg.data.root_absolute = str(root), ""
        from metaemb.core.plugin.components import build
        from metaemb.core.train.warmstart import refuse_unread_rehearsal

        folder = build("sample_folders", cfg.data.folder, cfg.options("folder"), root=root,
                       cache_dir=cache_dir(cfg))  # fmt: skip
        refuse_unread_rehearsal(folder, root, cfg.data.folder)
    # prints as `console` does, and copies it to RUN/train.log
    out = LoggingConsole(warnings_to=err_console, **console_options())
    trainer = Trainer(cfg, runs_root=runs, device=device, fresh=fresh, console=out,
                      workers=workers, callbacks=config_callbacks(cfg))  # fmt: skip
    from metaemb.core.runs import remove_unstarted_run

    new_folder = not trainer.dir.exists()
    if trainer.dist.main:
        out.open_log(trainer.dir / "train.log", "metaemb " + " ".join(sys.argv[1:]))
    try:
        with out.logging_warnings(), stopped_by_scheduler():
            result = trainer.run()
        if trainer.dist.main and not result.get("complete_before"):  # a finished run: untouched
            from metaemb.commands.plot import after_training

            after_training(trainer.dir, out)
    except RunInProgress:
        raise  # another process trains this run: its folder and log are not ours to touch
    except (MetaembError, OSError) as exc:  # OSError: a write that failed (stdout's disk full)
        with contextlib.suppress(OSError):
            out.log_only(f"error: {exc}")
        if new_folder and trainer.dist.main:
            out.close_log()
            remove_unstarted_run(trainer.dir)
        raise
    except RuntimeError as exc:  # the scheduler's signal reached the loader's workers first
        stopped = worker_signal(exc)
        if stopped is None:
            raise
        _said_stopped(out, trainer, f"terminated by {stopped.name}")
        raise typer.Exit(128 + stopped.value) from None
    except KeyboardInterrupt as exc:
        said = f"terminated by {exc.name}" if isinstance(exc, Terminated) else "interrupted"
        _said_stopped(out, trainer, said)
        raise typer.Exit(128 + exc.signum if isinstance(exc, Terminated) else 130) from None
    finally:
        out.close_log()


def _said_stopped(out: Any, trainer: Any, said: str) -> None:
    """The stop and how to resume, on stderr and in train.log (the file a batch job's user
    reads after the job died)."""
    line = f"{said}; re-run the same command to resume {trainer.dir} from its last completed epoch."
    out.log_only(line)
    if trainer.dist.main:
        err_console.print(line, markup=False)


def distill(
    teacher: Annotated[
        Path, typer.Option(help="teacher run, checkpoint, or pretrained backbone (dlib-resnet)")
    ],
    student: Annotated[str, typer.Option(help="student backbone, e.g. mobilenet_v3_small")],
    modality: Annotated[
        str | None, typer.Option(help="default: the teacher run's modality, else face")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="data folder (default: demo data)")] = None,
    kd: Annotated[str, typer.Option(help="embedding or logits")] = "embedding",
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override")] = None,
    runs: Annotated[Path, typer.Option()] = Path("runs"),
    device: Device = "auto",
    fresh: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
    workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (default: data.workers)", min=0)
    ] = None,
) -> None:
    """Train a student backbone from a frozen teacher (task loss + knowledge distillation)."""
    own = {s.partition("=")[0].strip() for s in set_ or []}
    defaults = [
        f"train.teacher={json.dumps(str(teacher))}",
        "train.objective=distill",
        f"model.backbone={json.dumps(student)}",
        f"objective.kd={json.dumps(kd)}",
        f"name={json.dumps('distill-' + student)}",
    ]  # a key the user --sets is theirs (the same key twice is warned about)
    sets = [d for d in defaults if d.partition("=")[0] not in own] + list(set_ or [])
    modality = modality or _run_modality(teacher) or DEFAULT_MODALITY
    if not any("teacher_dim" in s for s in set_ or []):  # a projection to the teacher's size
        sets += _teacher_dim(teacher, modality, sets)
    train(modality=modality, data=data, config=None, set_=sets, runs=runs, device=device,
          fresh=fresh, workers=workers, on_bad_sample=None)  # fmt: skip


def _teacher_dim(teacher: Path, modality: str, sets: list[str]) -> list[str]:
    """`objective.teacher_dim` when the teacher's embeddings are not the student's size (a
    smaller student is the usual case); nothing when they match, so runs keep their hash."""
    from metaemb.core.train.pretrained import is_pretrained_name

    if is_pretrained_name(str(teacher)):
        from metaemb.core.plugin.manager import registry

        dim = int(getattr(registry("backbones").get(str(teacher)), "feature_dim", 0))
        return [f"objective.teacher_dim={dim}"] if dim else []
    from metaemb.core.config import resolve
    from metaemb.core.runs import saved_config

    dim = ((saved_config(teacher) or {}).get("model") or {}).get("dim")
    if not isinstance(dim, int):
        return []
    import warnings

    from metaemb.core.errors import MetaembError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once, when the run is resolved to train
            student = resolve(modality, None, sets).model.dim
    except MetaembError:  # said by the training that follows, with its context
        return []
    return [] if dim == student else [f"objective.teacher_dim={dim}"]


def _run_modality(run: Path) -> str | None:
    """The modality in the config.toml of a run folder (or of a checkpoint's folder), if any."""
    from metaemb.core.runs import saved_config

    value = (saved_config(run) or {}).get("modality")
    if value is None:  # config.toml lost: the checkpoint keeps the configuration too
        from metaemb.core.checkpoints import load_checkpoint
        from metaemb.core.deploy.loading import find_checkpoint
        from metaemb.core.errors import MetaembError

        try:
            value = (load_checkpoint(find_checkpoint(run)).get("config") or {}).get("modality")
        except (MetaembError, OSError):
            return None
    return value if isinstance(value, str) else None
