"""`metaemb lr-find`: the learning-rate range test for a training configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from metaemb.commands.console import make_console
from metaemb.commands.options import DEFAULT_MODALITY, Device, Workers

console = make_console()


def lr_find(
    modality: Annotated[
        str, typer.Option(help="face, speaker, or any plugin's modality")
    ] = DEFAULT_MODALITY,
    data: Annotated[Path | None, typer.Option(help="data folder (default: demo data)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted override")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps of the sweep")] = 200,
    start_lr: Annotated[float, typer.Option(help="first learning rate")] = 1e-6,
    end_lr: Annotated[float, typer.Option(help="last learning rate")] = 1.0,
    out: Annotated[
        Path, typer.Option(help="plot (PNG); the numbers go to the same name .json")
    ] = Path("lr_find.png"),
    device: Device = "auto",
    workers: Workers = 0,
) -> None:
    """Sweep the learning rate exponentially over a few hundred training steps, plot loss
    against it, and suggest a value for train.lr (the steepest descent of the smoothed loss)."""
    from metaemb.core.config import resolve
    from metaemb.core.errors import MetaembError
    from metaemb.core.eval.figures import PlotsUnavailable
    from metaemb.core.files import atomic_write_text
    from metaemb.core.paths import ensure_writable
    from metaemb.core.train.lr_find import lr_find_figure, lr_range_test

    if out.suffix.lower() == ".json":
        raise MetaembError(
            f"--out '{out}' names the plot, written next to its numbers "
            f"('{out.with_suffix('.json')}'): give a picture name such as "
            f"'{out.with_suffix('.png')}'."
        )
    ensure_writable(out, "plot")  # before the sweep
    ensure_writable(out.with_suffix(".json"), "results file")
    sets = list(set_ or [])
    if data is not None:
        from metaemb.core.paths import recordable

        sets.append(f"data.root={json.dumps(str(recordable(data, 'data folder')))}")
    cfg = resolve(modality, config, sets)
    result = lr_range_test(cfg, steps, start_lr, end_lr, device=device, workers=workers)
    from metaemb.core.files import remove_with_set, written_together

    drawn = True
    with written_together():  # the numbers and their plot replaced as a pair, the plot last
        atomic_write_text(out.with_suffix(".json"), json.dumps(result.to_dict(), indent=2))
        try:
            from metaemb.core.eval.figures import save_png

            save_png(lr_find_figure(result), out)
        except PlotsUnavailable:
            drawn = False
            if out.is_file():  # an earlier sweep's plot would stand beside these numbers
                remove_with_set(out)
    if drawn:
        console.print(f"plot: {out}", markup=False, soft_wrap=True)
    else:
        console.print("no plot: pip install 'metaemb[plots]' to get it", markup=False)
    stop = " (stopped early: the loss diverged)" if result.stopped_early else ""
    console.print(
        f"{len(result.lrs)} steps from lr {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}{stop}; "
        f"suggested train.lr = {result.suggestion:.3g} (smallest loss at {result.min_loss_lr:.3g})",
        markup=False,
        soft_wrap=True,
    )
