"""The `metaemb` command line, built by a factory so plugins can add commands before it runs."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from metaemb.commands.console import console_options, make_console
from metaemb.commands.options import FrontendSet
from metaemb.commands.signals import Terminated, stopped_by_scheduler, worker_signal

console = make_console()
err_console = make_console(stderr=True)


def create_app() -> typer.Typer:
    """Build the typer app: built-in commands, then commands from plugins' register_commands."""
    app = typer.Typer(
        name="metaemb",
        help="Train and evaluate embedding networks for biometric recognition (faces, voices, …).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(_root)
    app.command()(train)
    app.command()(evaluate)
    app.command()(distill)
    app.command()(embed)
    app.command("demo-data")(demo_data)
    from metaemb.commands.listing import list_components, plugins

    app.command()(plugins)
    app.command("list")(list_components)
    from metaemb.commands.trials import app as trials_app

    app.add_typer(trials_app, name="trials")
    from metaemb.commands.export import export as export_command

    app.command("export")(export_command)
    from metaemb.commands.gallery import enroll, identify, unenroll

    app.command()(enroll)
    app.command()(unenroll)
    app.command()(identify)
    from metaemb.commands.doctor import doctor

    app.command()(doctor)
    from metaemb.commands.neighbours import neighbours

    app.command()(neighbours)
    from metaemb.commands.plot import plot

    app.command()(plot)
    from metaemb.commands.runs import runs as runs_command

    app.command("runs")(runs_command)
    from metaemb.commands.lr_find import lr_find

    app.command("lr-find")(lr_find)
    from metaemb.commands.plugin_commands import add_plugin_commands

    add_plugin_commands(app)  # a plugin's command never replaces a built-in one
    return app


# ---------------------------------------------------------------------------------------------
def _show_version(value: bool) -> None:
    if value:
        from metaemb import __version__

        typer.echo(f"metaemb {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Train and evaluate embedding networks for biometric recognition (faces, voices, …)."""


def train(
    modality: Annotated[
        str | None,
        typer.Option(
            help="face, speaker, or any plugin's modality [default: the --config "
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps")] = "auto",
    fresh: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers", min=0)] = None,
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
        recordable(data, "data folder")
        sets.append(f"data.root={json.dumps(str(data))}")
        if not data.is_absolute():
            sets.append(f"data.root_absolute={json.dumps(str(data.resolve()))}")
    if on_bad_sample is not None:
        sets.append(f"data.on_bad_sample={json.dumps(on_bad_sample)}")
    if tensorboard:
        sets.append("train.tensorboard=true")
    if modality is None:  # a saved run's config.toml says which modality it trains
        from metaemb.core.config.toml_io import load_toml

        modality = str(load_toml(config).get("modality", "face")) if config else "face"
    cfg = resolve(modality, config, sets)
    from metaemb.core.runs import related_runs, run_dir

    earlier, twin = related_runs(runs, cfg)
    if twin is not None:
        err_console.print(
            f"note: {twin[0]} trained this same configuration on the same data folder, given as "
            f"--data {twin[1]}; runs are keyed by --data as typed, so this one starts in "
            f"{run_dir(runs, cfg)}. Stop it and pass --data {twin[1]} to resume that run instead.",
            markup=False,
        )
    if earlier is not None:  # the run hash of an earlier version covered options differently
        err_console.print(
            f"note: {earlier} holds this same configuration, trained by an earlier metaemb whose "
            f"run hash differed; this run starts in {run_dir(runs, cfg)}. `metaemb evaluate "
            f"{earlier}` still evaluates the earlier run.",
            markup=False,
        )
    from metaemb.core.errors import MetaembError
    from metaemb.core.runs import RunInProgress
    from metaemb.core.train.runlog import LoggingConsole
    from metaemb.core.train.workflows import config_callbacks

    if cfg.train.rehearsal and cfg.train.init_from:  # old samples mixed into the new data
        from metaemb.core.data.pipeline import cache_dir, data_root
        from metaemb.core.train.warmstart import rehearsal_root

        root = rehearsal_root(data_root(cfg), cfg.train.init_from, cfg.train.rehearsal,
                              cache_dir(cfg), cfg.train.seed)  # fmt: skip
        cfg.data.root, cfg.data.root_absolute = str(root), ""
    # prints as `console` does, and copies it to RUN/train.log
    out = LoggingConsole(warnings_to=err_console, **console_options())
    trainer = Trainer(cfg, runs_root=runs, device=device, fresh=fresh, console=out,
                      workers=workers, callbacks=config_callbacks(cfg))  # fmt: skip
    new_folder = not trainer.dir.exists()
    if trainer.dist.main:
        out.open_log(trainer.dir / "train.log", "metaemb " + " ".join(sys.argv[1:]))
    try:
        with out.logging_warnings(), stopped_by_scheduler():
            trainer.run()
        if trainer.dist.main:
            from metaemb.commands.plot import after_training

            after_training(trainer.dir, out)
    except RunInProgress:
        raise  # another process trains this run: its folder and log are not ours to touch
    except (MetaembError, OSError) as exc:  # OSError: a write that failed (stdout's disk full)
        with contextlib.suppress(OSError):
            out.log_only(f"error: {exc}")
        if new_folder and trainer.dist.main:
            out.close_log()
            _remove_unstarted_run(trainer.dir)
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
    out.log_only(said)
    if trainer.dist.main:
        err_console.print(
            f"{said}; re-run the same command to resume {trainer.dir} from its last "
            "completed epoch.",
            markup=False,
        )


def _remove_unstarted_run(folder: Path) -> None:
    """A run folder this command created and that holds no trained epoch (a mistake stopped it
    before training) is removed: such folders piled up unseen, one per configuration tried.
    Under the run's lock, so a folder another process has started training meanwhile stays."""
    import contextlib
    import shutil

    from metaemb.core.errors import MetaembError
    from metaemb.core.runs import LOCK_NAME, RunLock

    trained = ("last.pt", "best.pt", "metrics.jsonl")
    if not folder.is_dir():
        return
    try:
        lock = RunLock(folder).acquire()
    except MetaembError:  # another process trains it now (or it cannot be written)
        return
    try:
        if any((folder / name).exists() for name in trained):
            return
        for child in folder.iterdir():
            if child.name != LOCK_NAME:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    finally:
        lock.release()
    with contextlib.suppress(OSError):  # empty unless another process started in it since
        folder.rmdir()


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
    device: Annotated[str, typer.Option()] = "auto",
    fresh: Annotated[bool, typer.Option()] = False,
    workers: Annotated[int | None, typer.Option(min=0)] = None,
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
    from metaemb.core.train.pretrained import is_pretrained_name

    if is_pretrained_name(str(teacher)) and not any("teacher_dim" in s for s in set_ or []):
        from metaemb.core.plugin.manager import registry

        dim = int(getattr(registry("backbones").get(str(teacher)), "feature_dim", 0))
        sets += [f"objective.teacher_dim={dim}"] if dim else []
    modality = modality or _run_modality(teacher) or "face"
    train(modality=modality, data=data, config=None, set_=sets, runs=runs, device=device,
          fresh=fresh, workers=workers, on_bad_sample=None)  # fmt: skip


def _run_modality(run: Path) -> str | None:
    """The modality in the config.toml of a run folder (or of a checkpoint's folder), if any."""
    from metaemb.core.runs import saved_config

    value = (saved_config(run) or {}).get("modality")
    return value if isinstance(value, str) else None


def evaluate(
    run: Annotated[
        Path | None, typer.Argument(help="run directory or checkpoint (.pt); or --reference")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="data folder (default: the run's)")] = None,
    trials: Annotated[Path | None, typer.Option(help="trial list (VoxCeleb, Kaldi, LFW)")] = None,
    protocol: Annotated[str | None, typer.Option(help="lfw, voxceleb, kaldi, …")] = None,
    protocol_set: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE option of --protocol (e.g. min_age_gap=20), repeatable"),
    ] = None,
    scorer: Annotated[str | None, typer.Option(help="scorer name (default: the run's)")] = None,
    p_target: Annotated[
        list[float] | None,
        typer.Option(help="target prior of minDCF/actDCF, repeatable (default: the run's)"),
    ] = None,
    calibrate: Annotated[
        Path | None, typer.Option(help="trial list of held-out trials to train calibration on")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: RUN/eval-…)")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    measure: Annotated[
        str, typer.Option(help="verification (pairs), match (triplets) or class (closed set)")
    ] = "verification",
    enroll_samples: Annotated[
        int | None, typer.Option(help="--measure class: samples enrolled per identity [default: 1]")
    ] = None,
    frontend_set: FrontendSet = None,
    reference: Annotated[
        str | None,
        typer.Option(help="score --data with a pretrained backbone instead of a run (dlib-resnet)"),
    ] = None,
    modality: Annotated[
        str | None, typer.Option(help="modality of --reference [default: face]")
    ] = None,
    adapt: Annotated[
        bool,
        typer.Option(
            help="adapt without labels to the files scored: the scorer (centre on their mean, "
            "scale by their spread: scorers with adapt_mean or adapt_scale = true) and the "
            "network's BatchNorm statistics (runs with eval.adapt_batchnorm = true)"
        ),
    ] = True,
) -> None:
    """Evaluate a trained model: metrics table, metrics.json, scores.txt and plots."""
    from metaemb.core.data.pipeline import use_frontend_set
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.evaluate import Evaluation

    use_frontend_set(frontend_set)
    preloaded = None
    if modality is not None and reference is None:
        raise MetaembError("--modality is for --reference (a run knows its modality): leave it "
                           "out, or score --data with --reference NAME.")  # fmt: skip
    modality = modality or "face"
    if reference is not None:
        from metaemb.core.train.pretrained import reference_run

        if run is not None or data is None:
            raise MetaembError("--reference NAME scores --data DIR with NAME instead of a run: "
                               "give --data and no RUN.")  # fmt: skip
        preloaded = reference_run(reference, modality, data, device)
        run, out = Path(f"reference-{reference}"), out or Path(f"eval-reference-{reference}")
    if run is None:
        raise MetaembError("evaluate needs a RUN (directory or checkpoint) or --reference NAME.")
    unused = {"--enroll-samples": enroll_samples is not None and measure != "class",
              "--protocol": protocol is not None and measure != "verification",
              "--protocol-set": bool(protocol_set) and protocol is None,
              "--p-target": bool(p_target) and measure != "verification",
              "--calibrate": calibrate is not None and measure != "verification"}  # fmt: skip
    for flag, given in unused.items():
        if given:
            raise MetaembError(f"{flag} does not apply to --measure {measure} (--enroll-samples is "
                               "for --measure class; --protocol and --calibrate for verification "
                               "pairs; --protocol-set for --protocol; --p-target for "
                               "verification): leave it out, or choose "
                               "the measure it is for.")  # fmt: skip
    if measure != "verification":
        from metaemb.core.eval.measures import run_measure

        enroll_samples = 1 if enroll_samples is None else enroll_samples
        run_measure(run, measure, data=data, trials=trials, scorer=scorer, enroll=enroll_samples,
                    out=out, device=device, workers=workers, console=console,
                    preloaded=preloaded, adapt=adapt)  # fmt: skip
        return
    evaluation = Evaluation(
        run,
        data=data,
        trials=trials,
        protocol=protocol,
        protocol_options=protocol_set or [],
        p_targets=p_target or [],
        scorer=scorer,
        calibrate=calibrate,
        out=out,
        device=device,
        workers=workers,
        console=console,
        adapt=adapt,
    )
    evaluation.preloaded = preloaded
    evaluation.run()


def embed(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint")],
    data: Annotated[list[Path], typer.Argument(help="<identity>/<sample> folder, or sample files")],
    out: Annotated[
        Path, typer.Option(help="output .pt file, or .npz (embeddings, paths, identities)")
    ],
    device: Annotated[str, typer.Option()] = "auto",
    workers: Annotated[int, typer.Option(min=0)] = 2,
    root: Annotated[
        Path | None,
        typer.Option(
            help="for sample files: the <identity>/… folder they belong to, so the run's sample "
            "folder names their identities (default: the folder each file sits in)"
        ),
    ] = None,
    frontend_set: FrontendSet = None,
    on_bad_sample: Annotated[
        str,
        typer.Option(
            "--on-bad-sample",
            help="error (default) or skip: leave samples that cannot be read out, with a warning",
        ),
    ] = "error",
) -> None:
    """Embed every sample of a folder, or the given sample files, with a trained model."""
    from metaemb.core.data.pipeline import use_frontend_set
    from metaemb.core.eval.collect import embed_inputs
    from metaemb.core.eval.retrieval import check_format
    from metaemb.core.paths import ensure_writable

    if on_bad_sample not in ("error", "skip"):
        from metaemb.core.errors import ConfigError

        raise ConfigError(f"--on-bad-sample must be error or skip, got '{on_bad_sample}'.")
    use_frontend_set(frontend_set)
    check_format(out)
    ensure_writable(out, "embeddings file")  # before any embedding
    collection = embed_inputs(checkpoint, list(data), device=device, workers=workers, root=root,
                              skip_bad=on_bad_sample == "skip")  # fmt: skip
    collection.save(out)
    console.print(f"wrote {len(collection)} embeddings to {out}", markup=False)


def demo_data(
    modality: Annotated[str, typer.Option(help="face, speaker, …")] = "face",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo-data"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="generator option, e.g. identities=40")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="another draw of the dataset (training's is the default)")
    ] = None,
) -> None:
    """Write a modality's built-in synthetic dataset as a normal <identity>/<sample> folder."""
    from metaemb.core.config import parse_set
    from metaemb.core.data.pipeline import generate_demo
    from metaemb.core.paths import ensure_writable_dir
    from metaemb.core.plugin.components import validate_options
    from metaemb.core.plugin.manager import registry

    ensure_writable_dir(out, "demo data folder")
    name = registry("modalities").get(modality).demo_data
    if not name:
        from metaemb.core.errors import ConfigError

        raise ConfigError(f"modality '{modality}' has no built-in demo dataset.")
    items = dict(parse_set(s) for s in set_ or [])  # `demo.identities=2`, as train takes it, too
    items = {k.removeprefix("demo."): v for k, v in items.items()}
    if "seed" in items:
        from metaemb.core.errors import ConfigError

        raise ConfigError("the demo dataset's seed is not a --set option: use --seed N.")
    opts = validate_options("demo_data", name, items, "demo")
    generate_demo(name, opts, out, seed)
    console.print(f"wrote the {modality} demo dataset to {out}", markup=False)


# ---------------------------------------------------------------------------------------------
def _user_message(exc: BaseException) -> str:
    """A one-paragraph message; errors re-raised from DataLoader workers carry a traceback text."""
    text = str(exc)
    if "Traceback" in text:
        for line in reversed(text.strip().splitlines()):
            if "Error: " in line:
                return line.split("Error: ", 1)[1]
    return text


def main() -> None:
    from metaemb.core.errors import MetaembError

    if sys.argv[1:] == ["--version"]:  # answer before loading plugins (works even if one is broken)
        from metaemb import __version__

        print(f"metaemb {__version__}")
        return
    _tolerant_output()
    _plain_warnings()
    from metaemb.core.data.pipeline import use_frontend_set

    use_frontend_set(None)  # a command's --frontend-set never outlives it
    try:
        app = create_app()
        app()
    except MetaembError as exc:
        _print_error(_user_message(exc))
        sys.exit(2)
    except OSError as exc:  # a write that failed past the up-front checks (e.g. the disk filled)
        from metaemb.core.paths import is_write_error, output_error

        if not is_write_error(exc):
            raise
        if exc.filename is None and not _writable(sys.stdout):
            _print_error(str(output_error(exc, "<standard output>", "command's output")))
        else:
            _print_error(str(output_error(exc, exc.filename or "?", "output")))
        sys.exit(2)


def _plain_warnings() -> None:
    """metaemb's warnings (UserWarning) print as one "warning: …" line for a user, not as a
    source path and line of code; other categories keep Python's format for developers."""
    import warnings

    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if category is UserWarning:
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def _tolerant_output() -> None:
    """File names that are not valid UTF-8 reach Python as lone surrogates; print them as
    backslash escapes instead of failing with UnicodeEncodeError halfway through the output."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _writable(stream: Any) -> bool:
    """Whether `stream` still takes output (a write error without a file name is most often
    the standard output: a log file on a full disk, a closed pipe)."""
    try:
        stream.write("")
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _print_error(text: str) -> None:
    message = escape(text)  # "metaemb[plots]" and paths like "data/mk[/y]z" are text, not markup
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
