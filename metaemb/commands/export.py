"""`metaemb export`: a trained model → ONNX or TorchScript file + JSON sidecar (docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metaemb.commands.options import FeaturesSet


def export(
    checkpoint: Annotated[Path, typer.Argument(help="run directory or checkpoint (.pt)")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option(help="output file (default: beside the checkpoint, best.onnx / …)"),
    ] = None,
    opset: Annotated[
        int | None, typer.Option(help="ONNX opset version (13–20) \\[default: 17]")
    ] = None,
    features_set: FeaturesSet = None,
) -> None:
    """Export the inference model (features, backbone, head) with a dynamic batch dimension."""
    from metaemb.core.data.pipeline import use_features_set
    from metaemb.core.deploy.export import DEFAULT_OPSET
    from metaemb.core.deploy.export import export as run_export
    from metaemb.core.errors import MetaembError

    use_features_set(features_set)

    if out is not None and out.suffix.lower() == ".json":  # OUT.json is the sidecar's name
        raise MetaembError(f"--out '{out}' ends in .json: an export is a model file (.onnx, "
                           ".pt), and its sidecar is written beside it as OUT.json.")  # fmt: skip
    if opset is not None and format == "torchscript":
        raise MetaembError(f"--opset is an ONNX setting; --format {format} has none: leave it out.")
    result = run_export(checkpoint, format, out, DEFAULT_OPSET if opset is None else opset)
    info = result.info
    names = ", ".join(i["name"] for i in info["inputs"])
    outputs = ", ".join(o["name"] for o in info["outputs"])
    typer.echo(
        f"wrote {result.path} ({info['format']}; inputs {names} → {outputs}, "
        f"{info['embedding']['kind']} dim {info['embedding']['dim']}; matches PyTorch to "
        f"{info['verified']['max_abs_diff']:.2g} for batch sizes 1 and 3)"
    )
    typer.echo(f"wrote {result.sidecar} (input spec and preprocessing to replicate)")
    scorer = result.info["scorer"]
    if scorer["state"]:
        typer.echo(
            f"wrote {result.path.with_name(scorer['state'])} (the fitted state of scorer "
            f"'{scorer['name']}': score with it, not plain cosine; see docs/export.md)"
        )
