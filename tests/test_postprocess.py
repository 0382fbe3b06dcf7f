"""FCOSPostProcessor: an exact hand-built case (decode, clip, threshold, top-k, class-aware NMS,
max_per_img, rescale), batch = images one by one, equality with a per-image reference loop, and
the eval transform's resize undone exactly by the rescale."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms

from fcosdet.data.transforms import build_transforms
from fcosdet.model import FCOSOutputs
from fcosdet.model.boxes import distance2bbox
from fcosdet.model.points import anchor_points, level_points
from fcosdet.model.postprocess import FCOSPostProcessor, _rescale


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _hand_built() -> FCOSOutputs:
    """A 16x16 padded image, strides (8, 16): level 0 has 2x2 points (4,4) (12,4) (4,12) (12,12),
    level 1 one point (8,8). Centerness logits 0: every score is p * 0.5."""
    cls0 = torch.full((1, 2, 2, 2), _logit(0.001))  # (B, C, H, W)
    cls0[0, 0, 0, 0] = _logit(0.9)  # point (4,4) class 0
    cls0[0, 0, 0, 1] = _logit(0.8)  # point (12,4) class 0: overlaps (4,4)'s box, suppressed
    cls0[0, 1, 0, 1] = _logit(0.7)  # point (12,4) class 1: same box, other class, kept
    cls0[0, 1, 1, 0] = _logit(0.3)  # point (4,12): above score_thr but 4th best -> top-k drops it
    cls0[0, 0, 1, 1] = _logit(0.6)  # point (12,12) class 0: box clipped at the valid height 14
    bbox0 = torch.zeros(1, 4, 2, 2)  # (B, 4, H, W) distances (l, t, r, b)
    bbox0[0, :, 0, 0] = torch.tensor([2.0, 2, 2, 2])  # -> (2, 2, 6, 6)
    bbox0[0, :, 0, 1] = torch.tensor([9.0, 2, -5, 2])  # -> (3, 2, 7, 6): IoU 0.6 with (2, 2, 6, 6)
    bbox0[0, :, 1, 0] = torch.tensor([1.0, 1, 1, 1])  # -> (3, 11, 5, 13)
    bbox0[0, :, 1, 1] = torch.tensor([2.0, 2, 2, 4])  # -> (10, 10, 14, 16) clipped to (10, 10, 14, 14)
    cls1 = torch.full((1, 2, 1, 1), _logit(0.001))
    cls1[0, 1, 0, 0] = _logit(0.99)  # point (8,8) class 1
    bbox1 = torch.full((1, 4, 1, 1), 8.0)  # -> (0, 0, 16, 16) clipped to (0, 0, 16, 14)
    ctr = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    return FCOSOutputs([cls0, cls1], [bbox0, bbox1], ctr)


def _post(**kw) -> FCOSPostProcessor:
    args = dict(strides=(8, 16), nms_pre=3, score_thr=0.05, nms_iou=0.5, max_per_img=10)
    return FCOSPostProcessor(**{**args, **kw})


def test_hand_built_outputs_give_exact_detections():
    det = _post()(_hand_built(), [(14, 16)])[0]
    expected_boxes = torch.tensor([[0.0, 0, 16, 14], [2, 2, 6, 6], [3, 2, 7, 6], [10, 10, 14, 14]])
    torch.testing.assert_close(det["boxes"], expected_boxes, rtol=0, atol=1e-6)
    torch.testing.assert_close(det["scores"], torch.tensor([0.99, 0.9, 0.7, 0.6]) * 0.5,
                               rtol=0, atol=1e-6)
    assert det["labels"].tolist() == [1, 0, 1, 0]


def test_threshold_top_k_max_per_img_sqrt_and_rescale():
    outputs = _hand_built()
    # without top-k the 4th point (score 0.15) survives; a threshold of 0.2 drops it again
    no_topk = _post(nms_pre=0)(outputs, [(14, 16)])[0]
    assert no_topk["scores"].tolist() == pytest.approx([0.495, 0.45, 0.35, 0.3, 0.15], abs=1e-6)
    assert len(_post(nms_pre=0, score_thr=0.2)(outputs, [(14, 16)])[0]["scores"]) == 4
    # NMS at IoU 0.7 keeps the 0.6-overlapping box of the same class
    assert len(_post(nms_iou=0.7)(outputs, [(14, 16)])[0]["scores"]) == 5
    two = _post(max_per_img=2)(outputs, [(14, 16)])[0]
    assert two["labels"].tolist() == [1, 0]
    sqrt = _post(sqrt_score=True)(outputs, [(14, 16)])[0]
    torch.testing.assert_close(sqrt["scores"], torch.tensor([0.495, 0.45, 0.35, 0.3]).sqrt())
    # original image 28 x 48: x scaled by 3, y by 2, clipped to it
    big = _post()(outputs, [(14, 16)], [(28, 48)])[0]
    expected = torch.tensor([[0.0, 0, 48, 28], [6, 4, 18, 12], [9, 4, 21, 12], [30, 20, 42, 28]])
    torch.testing.assert_close(big["boxes"], expected, rtol=0, atol=1e-5)


def test_batch_equals_images_one_by_one():
    torch.manual_seed(0)
    post = FCOSPostProcessor(nms_pre=50, score_thr=0.3, max_per_img=7)
    sizes = [(16, 8), (8, 4), (4, 2), (2, 1), (1, 1)]
    outputs = FCOSOutputs([torch.randn(2, 4, h, w) for h, w in sizes],
                          [torch.rand(2, 4, h, w) * 60 for h, w in sizes],
                          [torch.randn(2, 1, h, w) for h, w in sizes])
    batch = post(outputs, [(120, 60), (100, 64)], [(240, 120), (100, 64)])
    for b, (size, orig) in enumerate([((120, 60), (240, 120)), ((100, 64), (100, 64))]):
        single = post(FCOSOutputs(*[[x[b:b + 1] for x in level] for level in outputs]), [size], [orig])[0]
        assert len(single["scores"]) == 7
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(batch[b][key], single[key])


def _reference(post: FCOSPostProcessor, outputs: FCOSOutputs, size, orig):
    """The straightforward per-image, per-level loop (mmdet's get_bboxes), rescaling before NMS."""
    points = anchor_points([x.shape[-2:] for x in outputs.cls_scores], post.strides)
    boxes, scores = [], []
    for cls, bbox, ctr, pts, stride in zip(*outputs, points, post.strides):
        sc = cls[0].permute(1, 2, 0).reshape(-1, cls.shape[1]).sigmoid() * ctr[0].reshape(-1, 1).sigmoid()
        dist = bbox[0].permute(1, 2, 0).reshape(-1, 4)
        if 0 < post.nms_pre < sc.shape[0]:
            keep = sc.max(1).values.topk(post.nms_pre).indices
            sc, dist, pts = sc[keep], dist[keep], pts[keep]
        boxes.append(distance2bbox(pts, dist, max_shape=size))
        scores.append(sc)
    boxes, scores = _rescale(torch.cat(boxes), size, orig), torch.cat(scores)
    idx, labels = (scores > post.score_thr).nonzero(as_tuple=True)
    keep = batched_nms(boxes[idx], scores[idx, labels], labels, post.nms_iou)[: post.max_per_img]
    return boxes[idx][keep], scores[idx, labels][keep], labels[keep]


@pytest.mark.parametrize("num_classes,nms_pre", [(3, 1000), (80, 200)])
def test_vectorised_equals_per_image_reference_loop(num_classes, nms_pre):
    torch.manual_seed(1)
    post = FCOSPostProcessor(nms_pre=nms_pre, score_thr=0.05, max_per_img=100)
    sizes = [(40, 48), (20, 24), (10, 12), (5, 6), (3, 3)]  # a 320 x 384 padded batch
    outputs = FCOSOutputs([torch.randn(1, num_classes, h, w) - 2 for h, w in sizes],
                          [torch.rand(1, 4, h, w) * 8 * 2 ** i for i, (h, w) in enumerate(sizes)],
                          [torch.randn(1, 1, h, w) for h, w in sizes])
    got = post(outputs, [(300, 380)], [(600, 760)])[0]
    boxes, scores, labels = _reference(post, outputs, (300, 380), (600, 760))
    assert len(scores) > 50
    torch.testing.assert_close(got["scores"], scores)
    torch.testing.assert_close(got["boxes"], boxes, rtol=0, atol=1e-3)
    assert torch.equal(got["labels"], labels)


@pytest.mark.parametrize("orig", [(480, 640), (333, 517), (1024, 575)])
def test_eval_resize_round_trips_through_rescale(orig):
    height, width = orig
    boxes = np.array([[0, 0, width, height], [10.5, 20.25, 100.75, 200.5], [width - 7.5, 3, width, 9]],
                     np.float32)
    image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    transform = build_transforms(train=False, scale=(512, 320))
    _, target = transform(image, {"boxes": boxes, "labels": np.zeros(3, np.int64)})
    assert target["orig_size"] == orig and target["img_size"] != orig
    back = _rescale(target["boxes"], target["img_size"], target["orig_size"])
    torch.testing.assert_close(back, torch.from_numpy(boxes), rtol=0, atol=1e-3)


@pytest.mark.parametrize("offset", ["half_stride", "zero"])
def test_level_points_of_tensor_shapes_equal_anchor_points(offset):
    """The post-processor's points (built from the outputs' own shapes) are `anchor_points` of
    the integer sizes, and follow a symbolic H, W under torch.export."""
    sizes, strides = [(5, 7), (3, 4), (1, 1)], (8, 16, 32)
    expected = anchor_points(sizes, strides, offset=offset)
    for (h, w), stride, ref in zip(sizes, strides, expected):
        assert torch.equal(level_points(torch.zeros(2, 3, h, w).shape[-2:], stride, offset), ref)

    class Grid(torch.nn.Module):
        def forward(self, x):  # x (B, C, H, W) -> (H*W, 2)
            return level_points(x.shape[-2:], 16, offset)

    height, width = torch.export.Dim("height", min=2, max=64), torch.export.Dim("width", min=2, max=64)
    program = torch.export.export(Grid(), (torch.zeros(1, 3, 4, 6),),
                                  dynamic_shapes={"x": {2: height, 3: width}})
    for h, w in ((5, 7), (9, 3)):
        (ref,) = anchor_points([(h, w)], [16], offset=offset)
        assert torch.equal(program.module()(torch.zeros(1, 3, h, w)), ref)
