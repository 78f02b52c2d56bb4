"""Optional dependencies: imported only on the path that needs them, with a one-line install hint.

Every optional package metaemb uses is listed here with the extra that installs it, so the
message a user sees is the same everywhere and `metaemb doctor` can report what is importable.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from types import ModuleType

from metaemb.core.errors import MetaembError

# import name → (extra that installs it, distribution name on PyPI)
OPTIONAL: dict[str, tuple[str, str]] = {
    "matplotlib": ("plots", "matplotlib"),
    "dlib": ("face", "dlib-bin"),
    "face_recognition_models": ("face", "face_recognition_models"),
    "onnx": ("export", "onnx"),
    "onnxruntime": ("export", "onnxruntime"),
    "faiss": ("search", "faiss-cpu"),
    "silero_vad": ("vad", "silero-vad"),
    "av": ("audio-formats", "av"),
    "sklearn": ("tsne", "scikit-learn"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "h5py": ("hdf5", "h5py"),
}

# data-only packages located with find_spec (importing them pulls in pkg_resources)
NOT_IMPORTED = {"face_recognition_models"}

# Packages that no code path of metaemb may import at module level: the extras above plus
# test-only and never-declared packages (checked by tests/test_import_discipline.py).
NOT_ON_MAIN_PATH: tuple[str, ...] = (
    *OPTIONAL,
    "sklearn",
    "tensorboard",
    "av",
    "h5py",
    "hypothesis",
    "pytest",
    "pandas",
    "cv2",
    "librosa",
    "mxnet",
)


class MissingExtra(MetaembError):
    """An optional package is not installed; the message names the extra that installs it."""


def install_hint(module: str) -> str:
    """`pip install 'metaemb[extra]'` (and the distribution) for an optional package."""
    extra, dist = OPTIONAL[module.split(".")[0]]
    return f"pip install 'metaemb[{extra}]' (or pip install {dist})"


def require(module: str, purpose: str, error: type[MetaembError] = MissingExtra) -> ModuleType:
    """Import an optional package, or raise `error` with one line naming the extra to install.

    `purpose` completes "… needs <package>", e.g. "ONNX export". `error` lets a subsystem keep
    its own MetaembError subclass (ExportError, GalleryError …).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = OPTIONAL[top][0]
        raise error(
            f"{purpose} needs {top}, from the optional '{extra}' extra: {install_hint(top)}."
        ) from None


def available(module: str) -> str | None:
    """The installed version of an optional package if it imports, else None (for `doctor`)."""
    if module in NOT_IMPORTED:  # a package of data files: are they there?
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        version = None
    else:
        try:
            version = getattr(importlib.import_module(module), "__version__", None)
        except Exception:  # a broken install is "not available", with no traceback
            return None
    if version is None:
        try:
            version = metadata.version(OPTIONAL[module][1])
        except (metadata.PackageNotFoundError, KeyError):
            version = "?"
    return str(version)
