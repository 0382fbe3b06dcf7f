"""int8 export on the demo model (shapes): an OpenVINO IR quantised by NNCF and an ONNX graph
quantised by onnxruntime, both calibrated on 16 train images, run through Detector.from_file and
`fcosdet eval` and compared with the fp32 model on real images; their metadata say int8 and how
they were calibrated; a missing NNCF or an empty calibration split is one error line.

`make test` runs this file in a pytest process of its own: in one process with the rest, the
next test that started a subprocess (tests/test_preset_sweep.py) died of a segfault in CPython's
type lookup, also with the quantisation done in a child process; so the int8 graphs compiled by
OpenVINO here are the likely source. Not understood yet: a long-lived process that loads int8
IRs (`fcosdet serve model_int8.xml`) should be watched for the same."""
import json
import sys

import pytest
import torch
from helpers import error_line
from test_safety import tiny_bccd
from torchvision.ops import box_iou

from fcosdet.cli.main import run as cli
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import Int8Settings, export_model
from fcosdet.deploy.predictor import Detector
from fcosdet.io.model_file import ModelFile

pytestmark = [pytest.mark.slow]
CALIB = 16


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, demo_model):
    """The demo model as fp32 ONNX (exported once), fp32 IR, int8 IR (NNCF) and int8 ONNX (onnxruntime)."""
    root = tmp_path_factory.mktemp("int8")
    parts = build_inference(ModelFile.load(demo_model["model"]))
    fp32 = export_model(parts, "onnx", root / "fp32.onnx")
    int8 = Int8Settings(dataset=str(demo_model["data"]), calib_images=CALIB)
    files = {"fp32_onnx": fp32,
             "fp32_xml": export_model(parts, "openvino", root / "fp32.xml", onnx_file=fp32),
             "int8_xml": export_model(parts, "openvino", root / "int8.xml", int8=int8, onnx_file=fp32),
             "int8_onnx": export_model(parts, "onnx", root / "int8.onnx", int8=int8, onnx_file=fp32)}
    val = json.loads((demo_model["data"] / "val.json").read_text())
    images = [demo_model["data"] / "images" / im["file_name"] for im in val["images"][:12]]
    return {**files, "root": root, "images": images, "model": demo_model["model"], "data": demo_model["data"]}


@pytest.fixture(scope="module")
def detectors(graphs):
    """One Detector per file (compiling a graph costs seconds): the PyTorch checkpoint and the graphs."""
    return {key: Detector.from_file(graphs[key]) for key in ("model", "fp32_xml", "int8_xml", "int8_onnx")}


def matched_share(reference, other, *, score_thr=0.3, iou=0.7):
    """Share of `reference` detections above score_thr with a same-label `other` detection at IoU >= iou."""
    total = matched = 0
    for ref, oth in zip(reference, other):
        keep = ref.scores > score_thr  # (D,)
        total += int(keep.sum())
        if not keep.any() or not len(oth):
            continue
        ious = box_iou(ref.boxes[keep], oth.boxes)  # (D_ref, D_other)
        same = ref.labels[keep][:, None] == oth.labels[None, :]
        matched += int(((ious >= iou) & same).any(dim=1).sum())
    return matched / max(total, 1)


@pytest.mark.parametrize("key", ["int8_xml", "int8_onnx"])
def test_int8_file_predicts_what_fp32_does_on_most_detections(graphs, detectors, key):
    reference = detectors["model"].predict_batch(graphs["images"])
    got = detectors[key].predict_batch(graphs["images"])
    assert sum(int((r.scores > 0.3).sum()) for r in reference) >= 10  # a model that finds the shapes
    assert matched_share(reference, got) >= 0.8
    assert got[0].names == reference[0].names


def test_fp32_ir_matches_the_pytorch_model(graphs, detectors):
    ref = detectors["model"].predict_batch(graphs["images"][:4])
    got = detectors["fp32_xml"].predict_batch(graphs["images"][:4])
    for g, r in zip(got, ref):
        assert g.labels.tolist() == r.labels.tolist()
        torch.testing.assert_close(g.boxes, r.boxes, rtol=0, atol=0.5)


def test_metadata_says_int8_and_how_it_was_calibrated(graphs, detectors):
    names = ModelFile.load(graphs["model"]).class_names
    for key, tool in (("int8_xml", "nncf"), ("int8_onnx", "onnxruntime")):
        assert ModelFile.load(graphs[key]).class_names == names  # metadata read without running the graph
        meta = detectors[key].backend.metadata
        q = meta["quantization"]
        assert meta["precision"] == "int8" and q["tool"] == tool and q["images"] == CALIB
        assert q["dataset"] == str(graphs["data"]) and q["split"] == "train" and tool in q["versions"]
        done, total = map(int, q["int8_weights"].split()[0].split("/"))
        # every convolution reads int8 weights, but for the head's last ones in onnxruntime's graph
        assert done == total - q.get("float_last_layers", 0) and done > 10
        assert not {"NonMaxSuppression", "TopK", "Sigmoid"} & set(q["quantiser_consumers"])
    assert detectors["fp32_xml"].backend.metadata["precision"] == "fp32"


def test_int8_graphs_keep_postprocessing_float(graphs):
    """No dequantised tensor reaches the decoding / score / top-k / NMS ops directly: they read float."""
    import onnx
    import openvino as ov
    graph = onnx.load(str(graphs["int8_onnx"])).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.op_type for n in graph.node if set(n.input) & dq}
    assert "Conv" in readers and not readers & {"Sigmoid", "Mul", "TopK", "NonMaxSuppression", "GatherElements"}
    model = ov.Core().read_model(str(graphs["int8_xml"]))
    readers = {t.get_node().get_type_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
               for t in op.output(0).get_target_inputs()}
    assert "Convolution" in readers and not readers & {"Sigmoid", "Multiply", "TopK", "NonMaxSuppression"}


def test_eval_reads_an_int8_ir(graphs, tmp_path):
    """`fcosdet eval` on the int8 IR (16 val images of the shapes data) finds the shapes."""
    val = json.loads((graphs["data"] / "val.json").read_text())
    ids = {im["id"] for im in val["images"][:16]}
    small = {**val, "images": val["images"][:16], "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
    (tmp_path / "val.json").write_text(json.dumps(small))
    (tmp_path / "data.yaml").write_text(f"format: coco\nroot: .\ntrain: {{images: {graphs['data'] / 'images'}, "
                                        f"annotations: {graphs['data'] / 'train.json'}}}\n"
                                        f"val: {{images: {graphs['data'] / 'images'}, annotations: val.json}}\n")
    cli(["eval", str(graphs["int8_xml"]), "--data", str(tmp_path / "data.yaml"), "--workers", "0",
         "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 16 and metrics["AP"] > 0.3  # fp32: 0.54 on all 128 val images


def test_missing_nncf_is_one_error_line_naming_the_extra(demo_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nncf", None)  # `import nncf` raises ImportError
    err = error_line(capsys, ["export", str(demo_model["model"]), "--format", "openvino", "--int8", "--data",
                              str(demo_model["data"]), "--out", str(tmp_path / "x.xml")])
    assert "pip install 'fcosdet[int8]'" in err and not (tmp_path / "x.xml").exists()


def test_empty_calibration_split_is_one_error_line(demo_model, tmp_path, capsys, shared_data):
    empty = tiny_bccd(tmp_path / "empty", shared_data, n_train=0)
    err = error_line(capsys, ["export", str(demo_model["model"]), "--format", "onnx", "--int8", "--data",
                              str(empty), "--out", str(tmp_path / "x.onnx")])
    assert "split 'train'" in err and "no images" in err
    err = error_line(capsys, ["export", str(demo_model["model"]), "--format", "openvino", "--int8", "--data",
                              str(demo_model["data"]), "--calib-images", "0", "--out", str(tmp_path / "x.xml")])
    assert "--calib-images must be at least 1" in err
    err = error_line(capsys, ["export", str(demo_model["model"]), "--format", "onnx", "--int8", "--max-ap-drop",
                              "0.01", "--data", str(demo_model["data"]), "--out", str(tmp_path / "x.onnx")])
    assert "--max-ap-drop needs --format openvino" in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.xml").exists()
