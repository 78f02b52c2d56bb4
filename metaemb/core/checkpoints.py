"""Full training states saved atomically and loaded safely (weights only: nothing unpickled),
with one-line reasons when a file is not a checkpoint this metaemb can read.
"""

from __future__ import annotations

import errno
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

import metaemb
from metaemb.core.errors import MetaembError
from metaemb.core.files import atomic_write_bytes

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a full training state atomically (serialised in memory, then temp file + rename)."""
    state = {**state, "format": CHECKPOINT_FORMAT, "metaemb_version": metaemb.__version__}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_error_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line: a pickled object is named
    (it is never unpickled: that could run code), anything else by its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"it holds a pickled Python object ({found.group(1)}), which metaemb never unpickles "
            "because unpickling can run code; it was not written by metaemb, or was altered"
        )
    legacy = isinstance(exc, (EOFError, IndexError, KeyError, pickle.UnpicklingError))
    not_torch = legacy or "invalid load key" in text  # torch's pre-zip reader on other bytes
    if not_torch or "Weights only load failed" in text:
        return "it is not a file written by torch.save (another kind of file, or damaged)"
    truncated = isinstance(exc, OSError) and exc.errno == errno.EINVAL  # a seek past its end
    if truncated or "zip archive" in text or "central directory" in text:
        return "it is truncated or damaged (its zip archive cannot be read)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _refuse_embeddings(path: Path, checkpoint: str) -> None:
    """An embeddings file (`metaemb embed`'s) given where a model goes: say which it is, and
    the checkpoint it names when it records one."""
    named = f" (it was made with '{checkpoint}')" if checkpoint else ""
    raise MetaembError(
        f"'{path}' is an embeddings file (from `metaemb embed`), not a checkpoint: give the run "
        f"folder or its best.pt{named}."
    )


def load_checkpoint(path: str | Path, expect_hash: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True) and refuse incompatible ones with a reason."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise MetaembError(f"checkpoint '{p}' {what}.")
    if p.suffix.lower() == ".npz" and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if "paths.npy" in z.namelist():
                _refuse_embeddings(p, "")
    export = export_format(p)
    if export:
        raise MetaembError(
            f"'{p}' is a {export} export (from `metaemb export`), not a checkpoint: metaemb's "
            "commands read the run folder or its best.pt. Run the export itself with "
            + ("onnxruntime." if export == "ONNX" else "torch.jit.load.")
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a checkpoint at all
        other = p.with_name("last.pt" if p.name == "best.pt" else "best.pt")
        if expect_hash is not None:
            advice = "Re-run train with --fresh to start over."
        elif p.name in ("best.pt", "last.pt") and zipfile.is_zipfile(other):
            advice = f"'{other}' beside it is intact: give that file instead."
        elif p.suffix.lower() in (".pt", ".pth"):
            advice = "Use the run's other checkpoint (best.pt or last.pt) or retrain the run."
        else:  # config.toml, a log: not a checkpoint at all
            advice = "Give the run directory or its best.pt."
        best = p.with_name("best.pt")
        if expect_hash is not None and p.name != best.name and zipfile.is_zipfile(best):
            advice = (f"'{best}' beside it is intact: evaluate or export it, and copy it away "
                      "before re-running train with --fresh, which starts over and replaces it.")  # fmt: skip
        raise MetaembError(
            f"checkpoint '{p}' cannot be read ({load_error_reason(exc)}). {advice}"
        ) from None
    if isinstance(state, dict) and "paths" in state and ("embeddings" in state or "a" in state):
        _refuse_embeddings(p, str(state.get("checkpoint", "")))
    if not isinstance(state, dict) or "format" not in state:
        raise MetaembError(f"'{p}' is not a metaemb checkpoint.")
    if state["format"] != CHECKPOINT_FORMAT and str(state["format"]).startswith("metaemb-"):
        kind = str(state["format"]).removeprefix("metaemb-")
        raise MetaembError(
            f"'{p}' is a metaemb {kind} file (format {state['format']!r}), not a model "
            "checkpoint: give a run folder or its best.pt."
        )
    if state["format"] != CHECKPOINT_FORMAT or _major(state.get("metaemb_version")) != _major(
        metaemb.__version__
    ):
        raise MetaembError(
            f"checkpoint '{p}' was written by metaemb {state.get('metaemb_version')} (checkpoint "
            f"format {state['format']}); this is metaemb {metaemb.__version__} (format "
            f"{CHECKPOINT_FORMAT}), which cannot load it. Use the matching metaemb version or "
            "retrain the run."
        )
    if expect_hash is not None and state.get("config_hash") != expect_hash:
        raise MetaembError(
            f"checkpoint '{p}' belongs to configuration {state.get('config_hash')}, not {expect_hash}; "
            "it will not be mixed into this run. Use --fresh to start this run over."
        )
    return state


def export_format(path: Path) -> str | None:
    """ "ONNX" or "TorchScript" for a file `metaemb export` writes, else None."""
    import zipfile

    if path.suffix.lower() == ".onnx":
        return "ONNX"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return "TorchScript" if any(n.endswith("/constants.pkl") for n in names) else None


def _major(version: str | None) -> str:
    if not version:
        return "?"
    parts = version.split(".")
    # 0.x releases may break compatibility at every minor version.
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]
