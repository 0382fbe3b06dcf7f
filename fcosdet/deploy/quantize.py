"""int8 post-training quantisation of the exported whole-detector graph (`fcosdet export --int8`).

Dimensions: B images (1 per calibration feed), Hp x Wp the padded image (multiples of 32), D
detections, N calibration images.

Two tools, one rule: only the network's convolutions are quantised; the decoding, score,
threshold, top-k, NMS and max_per_img stay float (quantising them gives zero mAP:
onnxruntime#10787, openvino#20437). Which nodes are post-processing is read off the graph,
not off node names: every node that feeds no convolution, directly or through other nodes
(`postprocess_nodes`), i.e. everything after the head's last convolutions, plus the point
grid and shape arithmetic beside them.
- OpenVINO: NNCF `nncf.quantize` (or `nncf.quantize_with_accuracy_control` with `max_ap_drop`:
  COCO AP on the val split, through `CocoEvaluator`) on the OpenVINO model converted from the
  ONNX graph, with an `nncf.IgnoredScope` over the post-processing nodes; NNCF is the optional
  extra `pip install 'fcosdet[int8]'` and is imported here only when used.
- onnxruntime: `quantize_static`, QDQ, per-channel int8 weights, uint8 activations, MinMax
  calibration, `op_types_to_quantize=["Conv"]`; `nodes_to_exclude` = the post-processing nodes and
  the head's last convolutions (`last_layers`: onnxruntime would quantise their outputs too).
Calibration feeds are the dataset's own images through the model's evaluation transform (what
`fcosdet eval` feeds the graph), one image per feed. After quantising, the graph is checked:
a quantiser feeding a post-processing node is an error (`check_quantised`).
"""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fcosdet.config import Config
from fcosdet.console import say, warn
from fcosdet.data.build import build_transform, load_split
from fcosdet.data.loader import DetectionDataset, pad_images
from fcosdet.deploy.backends import OPENVINO_CONFIG, RunGraph, openvino_runner
from fcosdet.engine.evaluation.coco import CocoEvaluator
from fcosdet.errors import UserError
from fcosdet.model.postprocess import Detections, split_per_image

CALIB_IMAGES = 300  # default number of calibration images (`--calib-images`)
SHAPE_OPS = ("Shape", "ShapeOf")  # ONNX / OpenVINO ops that read a tensor's shape, not its values
INSTALL_INT8 = "pip install 'fcosdet[int8]'"
Feeds = dict[str, np.ndarray]  # {"images": (1, 3, Hp, Wp) float32, "image_sizes": (1, 2) int64}


def require_module(name: str, *, fix: str) -> Any:
    """`import name`, or one UserError naming the fix (NNCF and OpenVINO are imported only when used)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserError(f"int8 export needs {name} ({exc}); install it: {fix}") from None


# ----------------------------------------------------------------------------- calibration data


class SplitFeeds:
    """The first `limit` images of a split (all when None) as graph feeds, each image decoded and
    put through the model's evaluation transform when iterated: N feeds of (1, 3, 800, 1216) would
    not fit in memory at once. Iterable again and again (NNCF passes over it more than once); an
    empty split is a UserError (load_split)."""

    def __init__(self, cfg: Config, dataset: str, split: str, *, limit: int | None = None) -> None:
        cfg = copy.deepcopy(cfg)
        cfg.data.dataset = dataset
        self.split = load_split(cfg, split)
        self._items = DetectionDataset(self.split, transforms=build_transform(cfg, train=False))
        self._count = len(self._items) if limit is None else min(limit, len(self._items))

    def __len__(self) -> int:
        return self._count

    def item(self, index: int) -> tuple[Feeds, dict[str, Any]]:
        """(feeds, target with image_id / img_size / orig_size) of image `index`."""
        image, target = self._items[index]  # (3, h, w)
        feeds = {"images": pad_images([image]).numpy(),  # (1, 3, Hp, Wp)
                 "image_sizes": np.asarray([target["img_size"]], dtype=np.int64)}  # (1, 2)
        return feeds, target

    def __iter__(self) -> Iterator[Feeds]:
        return (self.item(index)[0] for index in range(self._count))


def calibration_feeds(cfg: Config, dataset: str, *, split: str, images: int) -> SplitFeeds:
    """`images` (>= 1, see Int8Settings) calibration feeds from a split (all of it when smaller,
    said in one line); an empty split is a UserError (load_split)."""
    feeds = SplitFeeds(cfg, dataset, split, limit=images)
    if len(feeds) < images:
        warn(f"the {split} split of {dataset} holds {len(feeds)} images, fewer than --calib-images "
             f"{images}: calibrating on all {len(feeds)}")
    return feeds


def coco_metrics(run: RunGraph, items: Iterable[tuple[Feeds, dict[str, Any]]],
                 evaluator: CocoEvaluator) -> dict[str, Any]:
    """COCO metrics of a graph runner over (feeds, target) items, through fcosdet's evaluator."""
    evaluator.reset()
    for feeds, target in items:
        dets = Detections(*(torch.from_numpy(np.asarray(x)) for x in run(feeds)))
        per_image = split_per_image(dets, [target["img_size"]], [target["orig_size"]])[0]
        evaluator.process([{"image_id": target["image_id"], **per_image}])
    return evaluator.evaluate()


# ----------------------------------------------------------------------------- the graph


def postprocess_nodes(producers: Mapping[str, Sequence[str]], network: Iterable[str]) -> set[str]:
    """The nodes that feed no `network` node, directly or not, and are not one: what follows the
    network's last layers (decoding, score, top-k, NMS) and the shape / point-grid arithmetic
    beside it. `producers`: node -> the nodes whose outputs it reads (a DAG)."""
    upstream: set[str] = set()
    stack = list(network)
    while stack:
        node = stack.pop()
        if node in upstream:
            continue
        upstream.add(node)
        stack.extend(producers.get(node, ()))
    return set(producers) - upstream


def _ov_graph(model: Any) -> tuple[dict[str, list[str]], dict[str, str]]:
    """An openvino.Model -> (node -> producer nodes, node -> op type), by friendly name."""
    producers, types = {}, {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        producers[name] = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        types[name] = op.get_type_name()
    return producers, types


def _onnx_graph(model: Any) -> tuple[dict[str, list[str]], dict[str, str]]:
    """An onnx.ModelProto -> (node -> producer nodes, node -> op type), by node name."""
    made_by = {out: node.name for node in model.graph.node for out in node.output}
    producers = {node.name: [made_by[i] for i in node.input if i in made_by] for node in model.graph.node}
    return producers, {node.name: node.op_type for node in model.graph.node}


def last_layers(producers: Mapping[str, Sequence[str]], types: Mapping[str, str], *, post: set[str],
                layer_type: str) -> set[str]:
    """The network layers whose outputs the post-processing reads as values (not only their shape):
    the head's last convolutions. onnxruntime quantises a Conv's output too, so these stay float."""
    return {p for node in post if types[node] not in SHAPE_OPS for p in producers[node] if types.get(p) == layer_type}


def check_quantised(producers: Mapping[str, Sequence[str]], types: Mapping[str, str], *,
                    quantiser: str, post: set[str]) -> dict[str, Any]:
    """Which op types read a quantiser's output; an error when a post-processing node does (the
    detections would be quantised: zero mAP)."""
    fed = {node: types[node] for node, inputs in producers.items()
           if types[node] != quantiser and any(types.get(p) == quantiser for p in inputs)}
    leaked = sorted(n for n in set(fed) & post if types[n] not in SHAPE_OPS)
    if leaked:
        raise UserError(f"int8 export placed {quantiser} before post-processing nodes {leaked[:5]}; "
                        f"this is a bug in fcosdet: please report it, and use the fp32 export meanwhile")
    counts: dict[str, int] = {}
    for op_type in fed.values():
        counts[op_type] = counts.get(op_type, 0) + 1
    return {"quantiser_consumers": dict(sorted(counts.items())), "float_postprocess_nodes": len(post)}


def _weight_quantised(producers: Mapping[str, Sequence[str]], types: Mapping[str, str], *,
                      layer_type: str, weight_input: int, quantiser: str) -> str:
    """'54/55 Convolution': how many network layers read their weights through a quantiser."""
    layers = [n for n, t in types.items() if t == layer_type]
    int8 = [n for n in layers if len(producers[n]) > weight_input
            and types.get(producers[n][weight_input]) == quantiser]
    return f"{len(int8)}/{len(layers)} {layer_type}"


# ----------------------------------------------------------------------------- OpenVINO + NNCF


def _ap(metrics: Mapping[str, Any]) -> float:
    """COCO AP as a plain float; 0 where undefined (a subset without ground truth)."""
    value = metrics.get("AP")
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def _validation_fn(class_names: list[str]) -> Callable[[Any, Iterable[Any]], tuple[float, None]]:
    """NNCF's validation function: (compiled model, (feeds, target, record) items) -> (COCO AP, None).
    The evaluator holds just the items given (NNCF also ranks layers on single images)."""
    def validate(compiled: Any, items: Iterable[Any]) -> tuple[float, None]:
        items = list(items)
        evaluator = CocoEvaluator(records=[record for _, _, record in items], class_names=class_names)
        return _ap(coco_metrics(openvino_runner(compiled), [(f, t) for f, t, _ in items], evaluator)), None
    return validate


def quantize_openvino(model: Any, feeds: SplitFeeds, *, cfg: Config, class_names: list[str], dataset: str,
                      max_ap_drop: float | None = None) -> tuple[Any, dict[str, Any]]:
    """An openvino.Model of the whole detector and its calibration feeds (`calibration_feeds` of
    `dataset`) -> (its int8 model, what the metadata records). `max_ap_drop` (absolute AP, 0.005
    = half a point): accuracy-controlled quantisation on the val split, which puts the layers that
    cost most AP back to float."""
    nncf = require_module("nncf", fix=INSTALL_INT8)
    ov = require_module("openvino", fix="pip install openvino")
    import logging
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per node otherwise
    producers, types = _ov_graph(model)
    post = postprocess_nodes(producers, [n for n, t in types.items() if t == "Convolution"])
    scope = nncf.IgnoredScope(names=sorted(n for n in post if types[n] not in ("Constant", "Parameter", "Result")))
    common = dict(subset_size=len(feeds), target_device=nncf.TargetDevice.CPU, model_type=None,
                  ignored_scope=scope)
    say(f"int8: calibrating on {len(feeds)} {cfg.data.train_split} images of {dataset} with NNCF "
        f"{nncf.__version__}; {len(scope.names)} post-processing nodes stay float")
    info: dict[str, Any] = {"precision": "int8", "tool": "nncf", "dataset": dataset,
                            "split": cfg.data.train_split, "images": len(feeds),
                            "versions": {"nncf": nncf.__version__, "openvino": ov.get_version()}}
    if max_ap_drop is None:
        quantised = nncf.quantize(model, nncf.Dataset(feeds), **common)
        info["method"] = "nncf.quantize (post-training, MinMax + fast bias correction)"
    else:
        quantised, kept = _accuracy_controlled(nncf, ov, model, feeds, cfg=cfg, class_names=class_names,
                                               dataset=dataset, max_ap_drop=max_ap_drop, common=common)
        info.update(method="nncf.quantize_with_accuracy_control", max_ap_drop=max_ap_drop, **kept)
    q_producers, q_types = _ov_graph(quantised)
    info.update(check_quantised(q_producers, q_types, quantiser="FakeQuantize", post=post))
    info["int8_weights"] = _ov_int8_weights(quantised)
    return quantised, info


def _ov_int8_weights(model: Any) -> str:
    """'55/55 Convolution': how many convolutions read int8 weights (NNCF stores them as an int8
    Constant -> Convert -> [Subtract] -> Multiply chain, or behind a FakeQuantize)."""
    layers = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    int8 = 0
    for op in layers:
        node = op.input(1).get_source_output().get_node()
        while node.get_type_name() in ("Multiply", "Subtract", "Convert") and node.get_input_size():
            node = node.input(0).get_source_output().get_node()
        int8 += node.get_type_name() == "FakeQuantize" or (
            node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in ("i8", "u8"))
    return f"{int8}/{len(layers)} Convolution"


def _accuracy_controlled(nncf: Any, ov: Any, model: Any, feeds: SplitFeeds, *, cfg: Config,
                         class_names: list[str], dataset: str, max_ap_drop: float,
                         common: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """nncf.quantize_with_accuracy_control on the val split -> (model, {"val_split", "val_images",
    "fp32_AP", "int8_AP"}), both APs measured here on the whole val split."""
    split = cfg.data.val_split
    if not split:
        raise UserError("--max-ap-drop validates on the val split, but data.val_split is not set; "
                        "pass --set data.val_split=val")
    val = SplitFeeds(cfg, dataset, split)
    items = [(*val.item(i), record) for i, record in zip(range(len(val)), val.split.records)]  # small: kept
    validate = _validation_fn(class_names)
    quantised = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(feeds), nncf.Dataset(items, lambda item: item[0]), validate,
        max_drop=max_ap_drop, drop_type=nncf.DropType.ABSOLUTE, **common)
    core = ov.Core()
    fp32_ap, _ = validate(core.compile_model(model, "CPU", OPENVINO_CONFIG), items)
    int8_ap, _ = validate(core.compile_model(quantised, "CPU", OPENVINO_CONFIG), items)
    say(f"int8 (accuracy control, max drop {max_ap_drop:g}): AP {int8_ap:.4f} on {len(items)} {split} "
        f"images, fp32 {fp32_ap:.4f}")
    return quantised, {"val_split": split, "val_images": len(items), "fp32_AP": round(fp32_ap, 4),
                       "int8_AP": round(int8_ap, 4)}


# ----------------------------------------------------------------------------- onnxruntime


class _FeedsReader:
    """onnxruntime's CalibrationDataReader over the calibration feeds."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def quantize_onnx(fp32: Path, out: Path, feeds: SplitFeeds, *, cfg: Config, dataset: str) -> dict[str, Any]:
    """The fp32 ONNX detector and its calibration feeds -> an int8 QDQ ONNX file at `out` (no
    fcosdet metadata yet); returns what the metadata records. quant_pre_process is not run: it
    fails on NonMaxSuppression (onnxruntime#21476)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    model = onnx.load(str(fp32))
    producers, types = _onnx_graph(model)
    post = postprocess_nodes(producers, [n for n, t in types.items() if t == "Conv"])
    last = last_layers(producers, types, post=post, layer_type="Conv")
    say(f"int8: calibrating on {len(feeds)} {cfg.data.train_split} images of {dataset} with onnxruntime "
        f"{onnxruntime.__version__}; {len(post)} post-processing nodes and the {len(last)} last convolutions "
        f"stay float")
    quantize_static(str(fp32), str(out), _FeedsReader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], nodes_to_exclude=sorted(post | last), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)  # keeps per-image min / max only
    q_producers, q_types = _onnx_graph(onnx.load(str(out)))
    info = {"precision": "int8", "tool": "onnxruntime", "dataset": dataset, "split": cfg.data.train_split,
            "images": len(feeds), "versions": {"onnxruntime": onnxruntime.__version__},
            "method": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 "
                      "activations, MinMax)"}
    info.update(check_quantised(q_producers, q_types, quantiser="DequantizeLinear", post=post))
    info["float_last_layers"] = len(last)
    info["int8_weights"] = _weight_quantised(q_producers, q_types, layer_type="Conv", weight_input=1,
                                             quantiser="DequantizeLinear")
    return info
