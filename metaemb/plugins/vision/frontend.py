"""The face alignment Frontend: landmarks (file or detector, cached) → similarity-aligned crop.

It is the only place crops are made, for training, evaluation and enrollment alike, and it uses
`align.align_faces`, so a given image and configuration always give the same crop.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from metaemb.core.errors import ConfigError, DataError, MetaembError
from metaemb.core.plugin.contract import Kind
from metaemb.core.plugin.interfaces import Frontend
from metaemb.plugins.vision.align import align_faces, centre_landmarks, template
from metaemb.plugins.vision.landmark_cache import LandmarkCache
from metaemb.plugins.vision.landmarks import Landmarks, LandmarkSource

NO_FACE_POLICIES = ("skip", "error", "center")


def build_source(
    name: str, root: Path | None, options: dict[str, Any], strict: bool = False
) -> LandmarkSource:
    """Build landmark source `name` from the registry, passing the options its factory accepts
    (`strict`: an option it does not accept is an error, for options a user typed)."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.plugin.manager import registry

    factory = registry("landmark_sources").get(name)
    signature = inspect.signature(factory).parameters  # a class: its constructor's, less self
    params = {n for n, p in signature.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.values())
    accepted = params - {"root"}
    unknown = sorted(set(options) - accepted)
    if strict and unknown and not open_ended:
        raise ConfigError(
            f"landmark source '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(accepted)) or 'none'}."
        )
    kwargs = {k: v for k, v in options.items() if k in accepted or (strict and open_ended)}
    if "root" in params:
        kwargs["root"] = root
    return factory(**kwargs)


class AlignFrontend(Frontend):
    """Align faces to the canonical 5-point template (Umeyama similarity, bilinear warp).

    Options:
      source          landmark source: "file" (landmark files shipped with the data) or "dlib".
      landmarks_file  for "file": CSV/JSON (or glob) relative to the data root.
      crop_size       side of the aligned square crop (112, 128, 224 …; 64 for the demo set).
      template        0: pick the 112 or 128 convention from crop_size; 112 or 128 forces one.
      on_no_face      when no usable face is found: "skip" (a DataError the pipeline skips and
                      lists with data.on_bad_sample = "skip"), "error" (stop), "center" (take
                      the centred square, for pre-cropped data).
      detector, points, multiple, upsample   dlib options (see the "dlib" landmark source).
      cache           keep detector landmarks in <cache_dir>/landmarks (shared between runs).
    """

    accepts = Kind("image")
    yields = Kind("aligned-image")
    #: what `--frontend-set` may change after training: where landmarks come from and what to
    #: do without them (the crop itself is the model's input, fixed by training)
    access_options = ("source", "landmarks_file", "on_no_face", "detector", "multiple", "upsample")

    def __init__(
        self,
        root: Path | None = None,
        cache_dir: Path | None = None,
        source: str = "file",
        landmarks_file: str = "landmarks.csv",
        crop_size: int = 112,
        template: int = 0,
        on_no_face: str = "skip",
        detector: str = "hog",
        points: int = 68,
        multiple: str = "largest",
        upsample: int = 1,
        cache: bool = True,
    ) -> None:
        if on_no_face not in NO_FACE_POLICIES:
            raise ConfigError(
                f"frontend.on_no_face must be one of {', '.join(NO_FACE_POLICIES)}, "
                f"got '{on_no_face}'."
            )
        self.root = Path(root) if root is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.crop_size, self.template, self.on_no_face = crop_size, template, on_no_face
        _check_template(crop_size, template)
        self.source = build_source(
            source,
            self.root,
            {
                "landmarks_file": landmarks_file,
                "detector": detector,
                "points": points,
                "multiple": multiple,
                "upsample": upsample,
            },
        )
        self.source_name = source
        self.use_cache = cache and self.source.cacheable and self.cache_dir is not None
        self._cache: dict[str, LandmarkCache] = {}

    @staticmethod
    def export_details(options: dict[str, Any]) -> dict[str, Any]:
        """What a deployment needs to align as training did, for the export's sidecar: the
        crop's destination points, the landmark order, the fit and the warp."""
        from metaemb.plugins.vision.align import template

        size, convention = int(options.get("crop_size", 112)), int(options.get("template", 0))
        return {
            "crop_size": size,
            "template_points": {  # (x, y) in crop pixels, pixel centres at integers
                scheme: template(size, scheme, convention).round(4).tolist()
                for scheme in ("mtcnn5", "dlib5")
            },
            "landmark_order": {
                "mtcnn5": "image-left eye, image-right eye, nose tip, image-left mouth corner, "
                "image-right mouth corner (MTCNN / RetinaFace / InsightFace)",
                "dlib5": "dlib's 5-point shape model (eye corners and nose base), whose points "
                "are fitted to the mtcnn5 template (its own destination points above)",
            },
            "fit": "least-squares similarity (Umeyama, no reflection) from the 5 landmarks to "
            "the template points of the landmark file's scheme",
            "warp": "bilinear sampling of the inverse map, zero outside the image, pixel centres "
            "at integer coordinates (torch grid_sample align_corners=True), rounded to uint8",
            "python": "metaemb.plugins.vision.align.align_faces(images, landmarks, size, scheme)",
        }

    def key(self) -> str:
        return f"align:{self.source.key()}:{self.crop_size}:{self.template}:{self.on_no_face}"

    def cache_for(self, root: Path) -> LandmarkCache:
        k = str(root)
        if k not in self._cache:
            assert self.cache_dir is not None
            self._cache[k] = LandmarkCache(self.cache_dir, root, self.source.key())
        return self._cache[k]

    def landmarks(self, raw: Any, path: str, root: Path) -> Landmarks:
        """Landmarks of one sample, from the cache when the source is a detector."""
        if not self.use_cache:
            return self.source(raw, path, root)
        return self.cache_for(Path(root)).lookup(path, lambda: self.source(raw, path, root))

    def _check_inside(self, points: Any, raw: Tensor, path: str) -> None:
        """Landmarks may leave the frame a little (a face cut by the border), not by more than
        the image's own size: such points belong to another image or another pixel scale."""
        h, w = (int(v) for v in raw.shape[-2:])
        pts = np.asarray(points, dtype=np.float64)
        far = (pts[:, 0] < -w) | (pts[:, 0] > 2 * w) | (pts[:, 1] < -h) | (pts[:, 1] > 2 * h)
        if far.any():
            x, y = pts[int(np.argmax(far))]
            raise DataError(
                f"face alignment: landmark ({x:.6g}, {y:.6g}) lies far outside the {w}×{h} "
                f"image (landmark source '{self.source.key()}'): the points are not in this "
                "image's pixels. Fix or re-extract them (metaemb landmarks)."
            )

    def __call__(self, raw: Tensor, path: str, root: Path) -> Tensor:
        found = self.landmarks(raw, path, root)
        if found.outcome == "ok" and found.points is not None:
            self._check_inside(found.points, raw, path)
            return align_faces(
                raw, found.points, self.crop_size, found.scheme, convention=self.template
            )
        image = f"'{Path(root) / path}'"
        what = {
            "no_face": f"no face was found in {image}",
            "several_faces": f"{found.faces} faces were found in {image} (policy multiple='skip')",
            "missing": f"the landmark file has no entry for {image}",
        }.get(found.outcome, f"{found.outcome} for {image}")
        if self.on_no_face == "center":
            _note_centred_once(what)
            h, w = raw.shape[-2:]
            pts = centre_landmarks(int(h), int(w), self.crop_size, convention=self.template)
            return align_faces(raw, pts, self.crop_size, "mtcnn5", convention=self.template)
        message = f"face alignment: {what} (landmark source '{self.source.key()}')."
        if self.on_no_face == "error":
            raise MetaembError(
                message + " Set frontend.on_no_face = 'skip' (with data.on_bad_sample = 'skip') "
                "or 'center' to go on."
            )
        remedy = (  # the image itself may be fine: what is missing is its row
            ". Add its row to the landmark file (`metaemb landmarks` writes rows for the images "
            "where its detector finds a face, and lists the others beside the file) or remove "
            "the image"
            if found.outcome == "missing"
            else ""
        )
        raise DataError(  # a bad sample: skipped under --on-bad-sample skip, else an error
            message + " frontend.on_no_face = 'center' (after training: --frontend-set "
            f"on_no_face=center) would crop the image's centre instead{remedy} (with "
            "on_bad_sample='skip' it is skipped: train --on-bad-sample skip)."
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}


def _check_template(crop_size: int, convention: int) -> None:
    template(crop_size, convention=convention)  # raises ConfigError on a bad size/convention


_centred_noted = False


def _note_centred_once(what: str) -> None:
    """Say (once per process) that an image without usable landmarks was centre-cropped under
    on_no_face = 'center': a protocol number then rests partly on such crops."""
    global _centred_noted
    if _centred_noted:
        return
    _centred_noted = True
    warnings.warn(
        f"face alignment: {what}, so its centre is cropped (on_no_face = 'center'); later "
        "such images are cropped alike without a word. Said once per process (so once per "
        "data-loader worker); `metaemb landmarks` lists the images without a face.",
        stacklevel=3,
    )
