"""dlib face detection + landmarks, from the optional `face` extra (dlib-bin, face_recognition_models).

The model files come from the face_recognition_models package; nothing is downloaded. The
68-point model is reduced to the 5 MTCNN-order points (eye centres = mean of points 36–41 and
42–47, nose tip 30, mouth corners 48 and 54); the 5-point model (eye corners + nose base) keeps
its own points and aligns to its own template (`align.template(scheme="dlib5")`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from metaemb.core.errors import ConfigError, DataError
from metaemb.core.optional import MissingExtra, require
from metaemb.plugins.vision.landmarks import Landmarks, LandmarkSource

INSTALL_HINT = "pip install 'metaemb[face]'  (installs dlib-bin and face_recognition_models)"

MODEL_FILES = {
    "68": "shape_predictor_68_face_landmarks.dat",
    "5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
}


def require_dlib() -> Any:
    """Import dlib or raise a MetaembError that says how to install it."""
    return require("dlib", "face detection and landmarks with dlib")


def model_path(which: str) -> Path:
    """Path of a model file shipped by face_recognition_models (without importing pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            f"dlib's model files come from the face_recognition_models package: {INSTALL_HINT}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILES[which]
    if not path.is_file():
        raise MissingExtra(f"model file '{path}' is missing; reinstall it: {INSTALL_HINT}.")
    return path


def shape_to_points(parts: np.ndarray) -> tuple[np.ndarray, str]:
    """dlib shape points [68 or 5, 2] → (5 landmarks, scheme)."""
    if len(parts) == 68:
        pts = np.stack(
            [parts[36:42].mean(0), parts[42:48].mean(0), parts[30], parts[48], parts[54]]
        )
        return pts.astype(np.float64), "mtcnn5"
    if len(parts) == 5:
        return parts.astype(np.float64), "dlib5"
    raise DataError(f"unexpected dlib shape with {len(parts)} points (expected 68 or 5).")


def pick_face(boxes: np.ndarray, height: int, width: int, policy: str) -> int | None:
    """Index of the face to keep among boxes [K, 4] (left, top, right, bottom), or None.

    "largest": biggest area; "central": box centre nearest the image centre; "skip": only when
    exactly one face was found.
    """
    if len(boxes) == 0:
        return None
    if len(boxes) == 1:
        return 0
    if policy == "largest":
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(np.argmax(area))
    if policy == "central":
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        return int(np.argmin(((centres - [width / 2, height / 2]) ** 2).sum(1)))
    return None


def to_hwc(image: Any) -> np.ndarray:
    """uint8 tensor [3, H, W] / HWC array / PIL image → C-contiguous uint8 RGB array [H, W, 3]."""
    if hasattr(image, "permute"):
        image = image.permute(1, 2, 0).cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3], dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def load_models(detector: str, points: int) -> tuple[Any, Any]:
    """(face detector, shape predictor), loaded once per process (the 68-point model is 100 MB)."""
    dlib = require_dlib()
    if detector == "hog":
        det = dlib.get_frontal_face_detector()
    else:
        det = dlib.cnn_face_detection_model_v1(str(model_path("cnn")))
    return det, dlib.shape_predictor(str(model_path(str(points))))


class DlibLandmarks(LandmarkSource):
    """Detect faces with dlib (HOG or CNN) and place 68- or 5-point landmarks on the chosen one.

    Options: detector "hog"|"cnn"; points 68|5; multiple "largest"|"central"|"skip" (what to do
    when several faces are found; "skip" records the sample as "several_faces"); upsample: times
    the image is doubled before detection (finds smaller faces, slower).
    """

    def __init__(
        self, detector: str = "hog", points: int = 68, multiple: str = "largest", upsample: int = 1
    ) -> None:
        if detector not in ("hog", "cnn"):
            raise ConfigError(f"dlib detector must be 'hog' or 'cnn', got '{detector}'.")
        if points not in (68, 5):
            raise ConfigError(f"dlib landmark model must have 68 or 5 points, got {points}.")
        if multiple not in ("largest", "central", "skip"):
            raise ConfigError(
                f"policy for several faces must be 'largest', 'central' or 'skip', got '{multiple}'."
            )
        if upsample < 0:
            raise ConfigError(f"upsample must be ≥ 0, got {upsample}.")
        self.detector, self.points, self.multiple, self.upsample = (
            detector,
            points,
            multiple,
            upsample,
        )
        self.scheme = "mtcnn5" if points == 68 else "dlib5"
        self.calls = 0  # detections run by this process (tests count cache hits with it)
        self._models: tuple[Any, Any] | None = None
        require_dlib()  # fail at construction, with the install hint, not in a worker

    def key(self) -> str:
        return f"dlib:{self.detector}:{self.points}:{self.multiple}:{self.upsample}"

    def _load(self) -> tuple[Any, Any]:
        if self._models is None:
            self._models = load_models(self.detector, self.points)
        return self._models

    def boxes(self, img: np.ndarray) -> list[Any]:
        """dlib rectangles of the faces in an HWC uint8 image."""
        det, _ = self._load()
        self.calls += 1
        if self.detector == "hog":
            rects, _, _ = det.run(img, self.upsample, 0.0)
            return list(rects)
        return [d.rect for d in det(img, self.upsample)]

    def __call__(self, image: Any, path: str, root: Path) -> Landmarks:
        if image is None:
            from metaemb.plugins.vision.imageio import read_image

            image = read_image(Path(root) / path)  # any bit depth, size-capped
        img = to_hwc(image)
        rects = self.boxes(img)
        if not rects:
            return Landmarks("no_face", scheme=self.scheme)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], float)
        chosen = pick_face(boxes, img.shape[0], img.shape[1], self.multiple)
        if chosen is None:
            return Landmarks("several_faces", faces=len(rects), scheme=self.scheme)
        _, sp = self._load()
        shape = sp(img, rects[chosen])
        parts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        pts, scheme = shape_to_points(parts)
        return Landmarks("ok", pts, faces=len(rects), scheme=scheme)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_models": None}  # dlib objects reload in each worker
