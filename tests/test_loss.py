"""fcos_loss against the reference's formulas, on hand-built and random cases."""
import math

import pytest
import torch
from dense_reference import reference_loss

from fcosdet.model.criterion import fcos_loss
from fcosdet.model.points import REGRESS_RANGES, STRIDES, anchor_points
from fcosdet.model.targets import assign_targets

S, R = STRIDES, REGRESS_RANGES


def _outputs(b, h, w, c, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    shapes = [(-(-h // s), -(-w // s)) for s in S]
    make = lambda k, f=lambda x: x: [f(torch.randn(b, k, *hw, generator=g)).requires_grad_(requires_grad)  # noqa: E731
                                     for hw in shapes]
    return make(c), make(4, lambda x: (x * 0.5 + 3).exp()), make(1), shapes


@pytest.mark.parametrize("norm_on_bbox,center_sampling", [(False, False), (True, True), (False, True)])
def test_matches_reference_formulas_on_random_outputs(norm_on_bbox, center_sampling):
    cls, bbox, ctr, _ = _outputs(2, 160, 224, 3)
    if norm_on_bbox:
        bbox = [(b.detach() / s).requires_grad_() for b, s in zip(bbox, S)]
    boxes = [torch.tensor([[10.0, 12.0, 90.0, 150.0], [100.0, 20.0, 220.0, 80.0], [30.0, 30.0, 46.0, 41.0]]),
             torch.tensor([[0.0, 0.0, 224.0, 160.0]])]
    labels = [torch.tensor([0, 2, 1]), torch.tensor([1])]
    ours = fcos_loss(cls, bbox, ctr, boxes, labels, num_classes=3, norm_on_bbox=norm_on_bbox,
                     center_sampling=center_sampling)
    ref = reference_loss(cls, bbox, ctr, boxes, labels, num_classes=3, strides=S, regress_ranges=R,
                         norm_on_bbox=norm_on_bbox, center_sampling=center_sampling)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6), k
    g_ours = torch.autograd.grad(sum(ours.values()), bbox + cls)
    g_ref = torch.autograd.grad(sum(ref.values()), bbox + cls)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_perfect_regression_gives_zero_box_loss_and_hand_computed_focal_loss():
    h, w = 64, 64
    shapes = [(-(-h // s), -(-w // s)) for s in S]
    pts = anchor_points(shapes, S)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    labels, targets = assign_targets(pts, boxes, torch.tensor([1]), num_classes=2)
    num_pos = int((labels < 2).sum())
    assert num_pos == 25
    per_level = targets.split([a * b for a, b in shapes])
    cls = [torch.zeros(1, 2, a, b) for a, b in shapes]  # p = 0.5 everywhere
    bbox = [t.T.reshape(1, 4, a, b).clamp(min=1e-3) for t, (a, b) in zip(per_level, shapes)]
    ctr = [torch.zeros(1, 1, a, b) for a, b in shapes]
    for norm in (False, True):
        bb = [x / s for x, s in zip(bbox, S)] if norm else bbox
        loss = fcos_loss(cls, bb, ctr, [boxes], [torch.tensor([1])], num_classes=2, norm_on_bbox=norm)
        assert loss["loss_bbox"].abs() < 1e-5
    # focal loss at p = 0.5: positives 0.25 * 0.25 * ln2, negatives 0.75 * 0.25 * ln2
    total = sum(a * b for a, b in shapes) * 2
    expected = (num_pos * 0.25 + (total - num_pos) * 0.75) * 0.25 * math.log(2) / num_pos
    assert torch.isclose(loss["loss_cls"], torch.tensor(expected), rtol=1e-5)


def test_no_positive_gives_zero_but_differentiable_box_losses():
    cls, bbox, ctr, _ = _outputs(2, 64, 96, 4)
    empty = [torch.zeros((0, 4)), torch.zeros((0, 4))]
    loss = fcos_loss(cls, bbox, ctr, empty, [torch.zeros(0, dtype=torch.long)] * 2, num_classes=4)
    assert loss["loss_bbox"].item() == 0 and loss["loss_centerness"].item() == 0
    assert loss["loss_cls"] > 0
    sum(loss.values()).backward()
    assert all(torch.isfinite(b.grad).all() for b in bbox)
    assert all(b.grad.abs().sum() == 0 for b in bbox)


def test_giou_option_and_bad_name():
    cls, bbox, ctr, _ = _outputs(1, 96, 96, 2)
    boxes, labels = [torch.tensor([[8.0, 8.0, 60.0, 70.0]])], [torch.tensor([0])]
    loss = fcos_loss(cls, bbox, ctr, boxes, labels, num_classes=2, bbox_loss="giou")
    assert 0 < loss["loss_bbox"] < 2
    with pytest.raises(ValueError):
        fcos_loss(cls, bbox, ctr, boxes, labels, num_classes=2, bbox_loss="l1")
