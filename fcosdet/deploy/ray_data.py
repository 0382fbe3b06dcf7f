"""Inference at scale on Ray Data: `RayDetector`, a callable class for `Dataset.map_batches` that
holds one Detector per Ray actor, over images read as bytes (or paths), never as a stacked array,
so images of any size mix in one dataset.

    import ray
    from fcosdet.deploy.ray_data import RayDetector, read_images
    ray.init(num_cpus=2, include_dashboard=False)
    ds = read_images(["images/", "more/a.jpg"])  # columns "bytes", "path"
    out = ds.map_batches(RayDetector, fn_constructor_kwargs={"model": "best.pt"}, batch_size=8,
                         concurrency=2, num_cpus=1, batch_format="numpy")
    for row in out.iter_rows():  # "path", "results" (JSON of Results.to_dict()), "num_detections", "error"
        ...

Each Ray batch of B images is split by padded input shape (`fcosdet.serve.batching.padded_shape`)
before `Detector.predict_batch`, so an image's detections do not depend on which others share its
batch: they equal `fcosdet predict --batch-size 1` on the file (within float rounding of batched
convolutions). An image that cannot be decoded (or claims more than `max_megapixels`) gets an
"error" and no detections; the job goes on. Memory stays bounded by concurrency x batch_size images.

Ray is optional (`pip install 'fcosdet[ray]'`): only `read_images` imports it; the class itself is
plain Python and runs without Ray (a batch is a dict of numpy arrays).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fcosdet.data.images import IMAGE_SUFFIXES, image_size, load_image
from fcosdet.deploy.predictor import Detector
from fcosdet.errors import UserError
from fcosdet.serve.batching import group_by, padded_shape
from fcosdet.serve.limits import Refused, check_pixels, decode_image

DEFAULT_MAX_MEGAPIXELS = 40.0  # as `fcosdet serve`


def require_ray() -> Any:
    """The `ray` module, or one UserError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the extra's point
    except ImportError:
        raise UserError("Ray Data is not installed: pip install 'fcosdet[ray]' (an optional extra)") from None
    return ray


def read_images(sources: Sequence[str | Path]) -> Any:
    """A ray.data.Dataset with one row per image file under `sources` (files or folders): "bytes", "path"."""
    from fcosdet.cli.predict import collect_images  # the same files `fcosdet predict` would read

    ray = require_ray()
    paths = [str(p) for p in collect_images([str(s) for s in sources])]
    return ray.data.read_binary_files(paths, include_paths=True,
                                      file_extensions=[s.lstrip(".") for s in IMAGE_SUFFIXES])


class RayDetector:
    """batch {"bytes": (B,) object, "path": (B,) str} (or "path" alone: files read from disk) ->
    {"path", "results": (B,) JSON of Results.to_dict() ("" on error), "num_detections": (B,) int64,
    "error": (B,) str ("" when fine)}."""

    def __init__(self, model: str | Path, *, score_thr: float | None = None,
                 test_overrides: dict[str, Any] | None = None, device: str = "cpu",
                 onnx_runtime: str = "onnxruntime", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> None:
        self.detector = Detector.from_file(model, device=device, score_thr=score_thr,
                                           test_overrides=test_overrides, onnx_runtime=onnx_runtime)
        self.max_pixels = int(max_megapixels * 1e6)

    def _decode(self, path: str, data: bytes | None) -> Any:
        try:
            if data is not None:
                return decode_image(bytes(data), max_pixels=self.max_pixels)
            check_pixels(*image_size(path), max_pixels=self.max_pixels)
            return load_image(path)
        except Refused as exc:
            return f"{path}: {exc.reason}"
        except UserError as exc:
            return str(exc)
        except OSError as exc:  # image_size on a missing or unreadable file
            return f"{path} cannot be read ({type(exc).__name__}: {exc})"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        blobs = batch.get("bytes")
        decoded = [self._decode(p, None if blobs is None else blobs[i]) for i, p in enumerate(paths)]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        results: dict[int, dict[str, Any]] = {}
        for group in group_by([padded_shape(self.detector, *decoded[i].size) for i in good]):
            members = [good[g] for g in group]
            for i, r in zip(members, self.detector.predict_batch([decoded[i] for i in members])):
                results[i] = {**r.to_dict(), "file_name": paths[i]}
        return {"path": np.array(paths, dtype=object),
                "results": np.array([json.dumps(results[i]) if i in results else "" for i in range(len(paths))],
                                    dtype=object),
                "num_detections": np.array([len(results[i]["detections"]) if i in results else 0
                                            for i in range(len(paths))], dtype=np.int64),
                "error": np.array([d if isinstance(d, str) else "" for d in decoded], dtype=object)}
