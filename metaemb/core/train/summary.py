"""The end-of-run summary: a table on the terminal and a README.md in the run directory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metaemb.core.config import Config
from metaemb.core.files import atomic_write_text


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _columns(config: Config) -> list[tuple[str, str, Any]]:
    cols = [("EER", "eer", _pct)]
    cols += [(f"minDCF({p:g})", f"min_dcf_{p:g}", _num) for p in config.eval.p_targets]
    cols += [("Cllr", "cllr", _num), ("minCllr", "min_cllr", _num)]
    return cols


def describe_run(
    console: Console,
    config: Config,
    run_dir: Path,
    root: Path,
    train: Any,
    val: Any,
    n_trials: int,
    device: Any,
    ranks: int = 1,
) -> None:
    """What is about to be trained, on what, and where its files go."""
    m = config.model
    console.print(
        f"[bold]metaemb train[/] modality={escape(config.modality)} run={escape(str(run_dir))}\n"
        f"  data: {escape(str(root))} ({len(train)} training samples of {train.num_identities} "
        "identities; "
        f"validation: {len(val)} samples of {val.num_identities} held-out identities, "
        f"{n_trials} trials)\n"
        f"  model: {m.frontend} → {m.features} → {m.backbone} → {m.head}({m.dim}); objective "
        f"{_objective(config)}, sampler {config.train.sampler}, scorer {config.eval.scorer}; "
        f"device {device}"
    )
    if ranks > 1:  # train.batch_size is per rank: say what one optimiser step sees
        console.print(
            f"  ranks: {ranks} (torchrun), train.batch_size {config.train.batch_size} per rank: "
            f"a global batch of {ranks * config.train.batch_size}",
            markup=False,
        )
    if config.train.batch_size > len(train):  # a typo of 100 as 100000 trains one batch
        console.print(
            f"  note: train.batch_size {config.train.batch_size} is more than the {len(train)} "
            "training samples: each epoch is one batch of them.",
            markup=False,
        )


def _objective(config: Config) -> str:
    """The objective's name, with the scale and margin it trains with when it has them (a
    margin loss's defaults differ between toolkits: say which are used)."""
    from metaemb.core.plugin.manager import registry
    from metaemb.core.plugin.options import options_of

    name = config.train.objective
    try:
        opts = {k: o.default for k, o in options_of(registry("objectives").get(name)).items()}
    except Exception:  # an unknown name is refused elsewhere, by name
        return name
    given = config.options("objective")
    opts.update(given)
    keys = [k for k in ("scale", "margin") if isinstance(opts.get(k), (int, float))]
    keys += [k for k in given if k not in keys]  # what the user set (a plugin loss's k, t …)
    shown = ", ".join(f"{k}={_value(opts[k])}" for k in keys)
    return f"{name}({shown})" if shown else name


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):  # a composite's part: its name
        return str(v.get("name", "{…}"))
    return str(v)


def print_epoch(console: Console, config: Config, record: dict[str, Any], improved: bool) -> None:
    """One line per epoch: loss and the validation metrics."""
    dcf = " ".join(
        f"minDCF({q:g})={record.get(f'min_dcf_{q:g}', float('nan')):.4f}"
        for q in config.eval.p_targets
    )
    console.print(
        f"epoch {record['epoch']}: loss {record['loss']:.4f}  val EER {100 * record['eer']:.2f}%  "
        f"{dcf}  Cllr {record.get('cllr', float('nan')):.4f}  "
        f"({rate_text(record['samples_per_s'])}){'  ★ best' if improved else ''}"
    )


def print_summary(
    console: Console,
    config: Config,
    history: list[dict[str, Any]],
    baseline: dict[str, Any],
    skipped: list[str],
    samples: int | None = None,
) -> None:
    caption = f"baseline: {baseline.get('name', 'raw input')}, no learning" if baseline else None
    table = Table(title=f"{config.modality} run {config.name}-{config.hash()}", caption=caption)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("loss", justify="right")
    for title, _, _ in _columns(config):
        table.add_column(title, justify="right", no_wrap=True)
    best_epoch = min(history, key=lambda r: r.get(config.select_key(), float("inf")))["epoch"]
    for r in history:
        cells = [fmt(r.get(key)) for _, key, fmt in _columns(config)]
        table.add_row(
            f"{r['epoch']}{' ★' if r['epoch'] == best_epoch else ''}", _num(r["loss"]), *cells
        )
    if baseline:
        cells = [fmt(baseline.get(key)) for _, key, fmt in _columns(config)]
        table.add_row("baseline", "-", *cells)
    console.print(table)
    final = history[-1]
    best = next(r for r in history if r["epoch"] == best_epoch)
    if baseline.get("eer"):
        console.print(
            f"final validation EER {_pct(final['eer'])} (best {_pct(best['eer'])} at epoch "
            f"{best_epoch}) vs {baseline.get('name')} baseline EER {_pct(baseline['eer'])} "
            f"(final/baseline ratio {final['eer'] / baseline['eer']:.2f})"
        )
    base = baseline.get("eer")
    if isinstance(base, (int, float)) and best.get("eer") is not None and best["eer"] > base:
        console.print(
            f"[yellow]warning:[/] the best validation EER, {_pct(best['eer'])}, is worse than "
            f"the {escape(str(baseline.get('name')))} baseline's {_pct(base)}: the model has "
            "not learned more than the raw input gives (too few epochs, a learning rate that "
            "is off, or data the input alone already separates)."
        )
    if skipped:
        console.print(f"[yellow]{len(skipped)} bad sample(s) skipped[/]; listed in skipped.txt")
        _warn_one_cause(console, skipped, samples)


def _warn_one_cause(console: Console, skipped: list[str], samples: int | None) -> None:
    """Many files skipped with one and the same error are more often a component's bug (a
    frontend returning another shape) than damaged data: say so, with the error."""
    causes: Counter[str] = Counter()
    for line in skipped:
        path, _, error = line.partition("\t")
        causes[error.replace(path, "<file>")] += 1
    cause, count = causes.most_common(1)[0]
    share = count / samples if samples else 0.0
    if count < 3 or (samples and share < 0.02):
        return
    of = f" ({share:.0%} of the data)" if samples else ""
    console.print(
        f"[yellow]warning:[/] {count} skipped files{of} failed the same way: "
        f"{escape(cause[:300])}. One error on many files is more often a bug in a component "
        "(a frontend or features of a plugin) than damaged data: check it before trusting "
        "this run."
    )


def write_summary(
    path: Path, config: Config, history: list[dict[str, Any]], baseline: dict[str, Any]
) -> None:
    cols = _columns(config)
    lines = [
        f"# {config.modality} run `{config.name}-{config.hash()}`",
        "",
        f"Model: {config.model.frontend} → {config.model.features} → {config.model.backbone} → "
        f"{config.model.head}({config.model.dim}); objective `{config.train.objective}`, "
        f"scorer `{config.eval.scorer}`. Full configuration: `config.toml`.",
        "",
        "| epoch | loss | " + " | ".join(t for t, _, _ in cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for r in history:
        cells = " | ".join(fmt(r.get(key)) for _, key, fmt in cols)
        lines.append(f"| {r['epoch']} | {_num(r['loss'])} | {cells} |")
    if baseline:
        cells = " | ".join(fmt(baseline.get(key)) for _, key, fmt in cols)
        lines.append(f"| baseline: {baseline.get('name')} | - | {cells} |")
    lines += ["", "Validation: held-out identities, trials generated deterministically.", ""]
    atomic_write_text(path, "\n".join(lines))


def rate_text(samples_per_s: float) -> str:
    """Throughput as people read it: whole samples per second, a decimal below 10 (a slow run
    on a shared CPU is 0.4 samples/s, not 0), and seconds per sample below 0.1."""
    if 0 < samples_per_s < 0.1:
        return f"{1 / samples_per_s:.0f} s/sample"
    return f"{samples_per_s:.{0 if samples_per_s >= 10 else 1}f} samples/s"
