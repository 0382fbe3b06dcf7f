"""Detector: one object over a trained model file for inference on images.

    det = Detector.from_file("runs/exp/best.pt")  # or an exported .safetensors / .pt2 / .onnx file
    r = det.predict("image.jpg")  # Results: boxes (D, 4) original pixels, scores (D,), labels (D,), ...
    rs = det.predict(["a.jpg", "b.jpg"])  # list[Results], one per image (one batch)

Images (`predict` takes one, `predict_batch` a list; `predict` also takes a list):
- a path, or a PIL image (any mode: converted to 8-bit RGB as a loaded file is);
- a numpy array (H, W, 3) RGB: uint8 in 0..255, or float in 0..1;
- a torch tensor (3, H, W) RGB: uint8 in 0..255, or float in 0..1.
Float inputs are quantised to 8 bits (round(x * 255)) first, so an image gives the same
detections whichever form it comes in; values outside 0..1 are an error, never clipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union, overload

import numpy as np
import torch
from PIL import Image

from fcosdet.config import Config
from fcosdet.data.build import build_transform
from fcosdet.data.images import load_image, to_rgb8
from fcosdet.data.loader import pad_images
from fcosdet.data.transforms import DetectionTransform
from fcosdet.deploy.backends import OnnxBackend, TorchBackend
from fcosdet.deploy.build import build_inference, config_of
from fcosdet.deploy.fastpath import fast_inference_model
from fcosdet.deploy.graph import DetectorGraph
from fcosdet.deploy.results import Results
from fcosdet.deploy.slicing import FULL_VIEW, IOS_THR, SLICE_BATCH, Slicing, image_views, merge_views, offset_boxes
from fcosdet.errors import UserError
from fcosdet.io.model_file import GRAPH_SUFFIXES, ModelFile
from fcosdet.model.postprocess import Detections, split_per_image

if TYPE_CHECKING:
    from fcosdet.deploy.video import FrameResult

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


def _differs(a: Any, b: Any) -> bool:
    return abs(float(a) - float(b)) > 1e-12 if isinstance(a, (int, float)) else a != b


def _to_pil(image: ImageInput) -> Image.Image:
    """Any accepted image form -> 8-bit RGB PIL (see the module docstring for the conventions)."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"a tensor image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, 3)
    if not isinstance(image, np.ndarray):
        raise UserError(f"predict() takes a path, a PIL image, an (H, W, 3) numpy array, a (3, H, W) "
                        f"tensor or a list of them, not {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"a numpy image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    if not np.issubdtype(image.dtype, np.floating):
        raise UserError(f"image arrays must be uint8 (0..255) or float (0..1), got {image.dtype}")
    low, high = float(np.min(image)), float(np.max(image))
    if not (0.0 <= low and high <= 1.0):
        raise UserError(f"float images must hold values in 0..1, got {low:.3g}..{high:.3g}; divide by "
                        f"255 or pass a uint8 array")
    pixels = np.rint(image.astype(np.float64) * 255.0).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


class Detector:
    def __init__(self, *, backend: TorchBackend | OnnxBackend, transform: DetectionTransform,
                 class_names: list[str], config: Config, category_ids: list[int] | None = None,
                 category_ids_saved: bool = True) -> None:
        self.backend = backend
        self.transform = transform
        self.class_names = list(class_names)
        self.config = config  # the model file's settings (data.scale, test.*, ...)
        # the dataset's category id of each label (an imported COCO model: COCO's ids with gaps); None: label + 1
        self.category_ids = None if category_ids is None else list(category_ids)
        # False: the model file predates category ids, so label + 1 may not be its dataset's numbering
        self.category_ids_saved = category_ids_saved

    def category_id(self, label: int) -> int:
        """The category id results files carry for `label`: the model file's, else label + 1."""
        return self.category_ids[label] if self.category_ids is not None else label + 1

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @classmethod
    def from_file(cls, path: str | Path, *, device: str = "cpu", score_thr: float | None = None,
                  test_overrides: dict[str, Any] | None = None, fast: bool = True,
                  precision: str = "fp32", onnx_runtime: str = "onnxruntime") -> "Detector":
        """A `.pt` checkpoint, an exported `.safetensors` weights file, `.pt2` program, `.onnx`
        graph or OpenVINO IR `.xml` (fp32 or int8) -> a Detector (a `.pt2` runs as the PyTorch model
        its weights copy and config build: the program itself is never loaded, see `ModelFile.load`).
        `score_thr` / `test_overrides` ({"test.nms_iou": 0.6}) replace the file's test settings
        (an ONNX / IR graph has them baked in: only a higher score_thr is possible there).
        `fast` (PyTorch files): BatchNorm folded and channels_last, equal to the plain model
        within float rounding; `precision` "bf16": bf16 autocast (opt-in: detections move).
        `onnx_runtime` (`.onnx` files): "onnxruntime" or "openvino"; an `.xml` always runs on OpenVINO."""
        path = Path(path)
        overrides = dict(test_overrides or {})
        if score_thr is not None:
            overrides["test.score_thr"] = score_thr
        if path.suffix in GRAPH_SUFFIXES:
            return cls._from_onnx(path, device=device, overrides=overrides, precision=precision,
                                  runtime="openvino" if path.suffix == ".xml" else onnx_runtime)
        parts = build_inference(ModelFile.load(path), overrides=overrides)
        model = fast_inference_model(parts.model, channels_last=True) if fast else parts.model
        graph = DetectorGraph(model=model, postprocessor=parts.postprocessor)
        backend = TorchBackend(graph=graph, device=device, channels_last=fast, precision=precision)
        return cls(backend=backend, transform=parts.transform, class_names=parts.class_names,
                   config=parts.config, category_ids=parts.category_ids,
                   category_ids_saved=parts.category_ids_saved)

    @classmethod
    def _from_onnx(cls, path: Path, *, device: str, overrides: dict[str, Any], precision: str,
                   runtime: str) -> "Detector":
        """An exported graph (`.onnx`, or OpenVINO IR `.xml`; fp32 or int8) on the CPU."""
        kind = "OpenVINO IR" if path.suffix == ".xml" else "ONNX file"
        if not path.is_file():
            raise UserError(f"{kind} {path} does not exist; check the path")
        if torch.device(device).type != "cpu" or precision != "fp32":
            raise UserError(f"{path}: ONNX / OpenVINO IR files run on the CPU as exported (fp32 or int8); use the "
                            f".pt or .safetensors file for --device {device} / --precision {precision}")
        score_thr = overrides.pop("test.score_thr", None)
        backend = OnnxBackend(path, score_thr=score_thr, runtime=runtime)
        model_file = backend.model_file
        cfg = config_of(model_file)
        cfg.test.score_thr = backend.score_thr
        for key, value in overrides.items():
            baked = getattr(cfg.test, key.removeprefix("test."), None)
            if not key.startswith("test.") or baked is None or _differs(baked, value):
                raise UserError(f"{path} was exported with {key}={baked}, not {value}: test settings are "
                                f"part of the graph; export again with --set {key}={value}")
        return cls(backend=backend, transform=build_transform(cfg, train=False), class_names=model_file.class_names, config=cfg,
                   category_ids=model_file.category_ids, category_ids_saved=model_file.category_ids_saved)

    def detect(self, images: torch.Tensor, image_sizes: Sequence[Sequence[int]],
               orig_sizes: Sequence[Sequence[int]]) -> list[dict[str, torch.Tensor]]:
        """A prepared batch (B, 3, Hp, Wp) -> per image boxes (D, 4) in the original frame,
        scores (D,), labels (D,) on the CPU."""
        sizes = torch.tensor([list(s) for s in image_sizes], dtype=torch.int64)  # (B, 2)
        dets = Detections(*(t.cpu() for t in self.backend(images, sizes)))
        return split_per_image(dets, image_sizes, orig_sizes)

    def _prepare(self, image: ImageInput) -> tuple[torch.Tensor, dict[str, Any]]:
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64)}
        return self.transform(_to_pil(image), empty)  # (3, h, w) normalised, target with the sizes

    def labels_of(self, classes: Sequence[str]) -> list[int]:
        """Class names -> their labels; an unknown name is one error listing the model's classes."""
        unknown = [name for name in classes if name not in self.class_names]
        if unknown:
            raise UserError(f"unknown class {', '.join(map(repr, unknown))}: the model's classes are "
                            f"{', '.join(self.class_names)}")
        return [self.class_names.index(name) for name in classes]

    def predict_batch(self, images: Sequence[ImageInput], *, classes: Sequence[str] | None = None,
                      slicing: Slicing | None = None, batch_size: int = SLICE_BATCH) -> list[Results]:
        """Images (one batch) -> one Results per image; `classes` (names) keeps only those classes'
        detections (dropped after NMS and test.max_per_img, so the others are exactly the model's).
        `slicing`: sliced inference (`detect_sliced`), `batch_size` views per backend call."""
        keep = None if classes is None else self.labels_of(classes)
        pictures = [_to_pil(im) for im in images]
        if slicing is None:
            prepared = [self._prepare(p) for p in pictures]
            batch = pad_images([x for x, _ in prepared])  # (B, 3, Hp, Wp)
            dets = self.detect(batch, [t["img_size"] for _, t in prepared], [t["orig_size"] for _, t in prepared])
        else:
            dets = self.detect_sliced(pictures, slicing, batch_size=batch_size)
        ids = [self.category_id(label) for label in range(len(self.class_names))]
        results = [Results(boxes=d["boxes"], scores=d["scores"], labels=d["labels"], names=self.class_names,
                           category_ids=ids, orig_size=(p.height, p.width),
                           path=Path(im) if isinstance(im, (str, Path)) else None)
                   for d, im, p in zip(dets, images, pictures)]
        return results if keep is None else [r.only(keep) for r in results]

    def detect_sliced(self, images: Sequence[Image.Image], slicing: Slicing, *,
                      batch_size: int = SLICE_BATCH) -> list[dict[str, torch.Tensor]]:
        """8-bit RGB images -> per image boxes (D, 4) in the original frame, scores (D,), labels (D,)
        of sliced inference (`fcosdet.deploy.slicing`): the views of all the images (their tiles,
        then the full images) are resized by the model's own transform and go through the backend
        `batch_size` at a time; each image's detections are then merged."""
        if batch_size < 1:
            raise UserError(f"the batch size must be at least 1, got {batch_size}")
        grids = [image_views(p.width, p.height, slicing) for p in images]  # per image: tiles (T, 4), full pass
        views = [(i, v, tiles[v]) for i, (tiles, _) in enumerate(grids) for v in range(len(tiles))]
        views += [(i, FULL_VIEW, torch.tensor([0, 0, p.width, p.height])) for i, (p, (_, full))
                  in enumerate(zip(images, grids)) if full]
        # views of one resized size go together: no padding between them, and (GroupNorm sees the padding)
        # the same detections whatever batch_size is
        groups: dict[tuple[int, int], list] = {}
        for view in views:
            x1, y1, x2, y2 = view[2].tolist()
            groups.setdefault(self.transform.resized_size(y2 - y1, x2 - x1), []).append(view)
        found: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in images]  # per image: its views' detections
        for chunk in (g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)):
            prepared = [self._prepare(images[i].crop(tuple(box.tolist()))) for i, _, box in chunk]
            batch = pad_images([x for x, _ in prepared])  # (b, 3, Hp, Wp)
            dets = self.detect(batch, [t["img_size"] for _, t in prepared], [t["orig_size"] for _, t in prepared])
            for (i, v, box), d in zip(chunk, dets):
                found[i].append((offset_boxes(d["boxes"], box[:2]), d["scores"], d["labels"],
                                 torch.full(d["labels"].shape, v, dtype=torch.int64)))
        thr = slicing.merge_thr
        if thr is None:
            thr = IOS_THR if slicing.merge == "ios" else float(self.config.test.nms_iou)
        merged = []
        for p, (tiles, _), parts in zip(images, grids, found):
            boxes, scores, labels, view = (torch.cat(x) for x in zip(*parts))  # (N, 4), (N,), (N,), (N,)
            m = merge_views(boxes, scores, labels, view, tiles, width=p.width, height=p.height, merge=slicing.merge,
                            thr=thr, max_per_img=int(self.config.test.max_per_img))
            merged.append({"boxes": m.boxes, "scores": m.scores, "labels": m.labels})
        return merged

    @overload
    def predict(self, image: ImageInput, *, classes: Sequence[str] | None = None,
                slicing: Slicing | None = None, batch_size: int = SLICE_BATCH) -> Results: ...

    @overload
    def predict(self, image: Sequence[ImageInput], *, classes: Sequence[str] | None = None,
                slicing: Slicing | None = None, batch_size: int = SLICE_BATCH) -> list[Results]: ...

    def predict(self, image: ImageInput | Sequence[ImageInput], *, classes: Sequence[str] | None = None,
                slicing: Slicing | None = None, batch_size: int = SLICE_BATCH) -> Results | list[Results]:
        """One image -> its Results; a list (or tuple) of images -> a list of Results (one batch).
        `slicing` (`fcosdet.deploy.slicing.Slicing`): sliced inference, `batch_size` views per pass."""
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, classes=classes, slicing=slicing, batch_size=batch_size)
        return self.predict_batch([image], classes=classes, slicing=slicing, batch_size=batch_size)[0]

    def stream(self, source: str | Path, *, batch_size: int = 4, vid_stride: int = 1, track: bool = False,
               classes: Sequence[str] | None = None) -> Iterator[FrameResult]:
        """The frames of a video file, http(s) URL, rtsp:// stream or /dev/video device (or the
        images of a file, folder or glob), one `FrameResult` each (.index, .time, .image, .results),
        decoded in a thread and run `batch_size` frames per pass; memory stays constant however
        long the video is. Every `vid_stride`-th frame; `track`: Results.track_ids from ByteTrack
        (`fcosdet.deploy.video.stream`, `fcosdet.deploy.tracking.Tracker`).

            for f in Detector.from_file("best.pt").stream("clip.mp4", vid_stride=2, track=True):
                f.index, f.time, f.results.boxes, f.results.track_ids"""
        from fcosdet.deploy.video import stream

        return stream(self, source, batch_size=batch_size, vid_stride=vid_stride, track=track, classes=classes)
