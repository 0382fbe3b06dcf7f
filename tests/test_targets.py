"""Exact tests of the pure FCOS functions on hand-built cases, and against a dense oracle."""
import torch
from dense_reference import dense_assign

from fcosdet.model.boxes import aligned_iou, distance2bbox
from fcosdet.model.points import REGRESS_RANGES, STRIDES, anchor_points, level_grids
from fcosdet.model.targets import assign_targets, assign_targets_batch, centerness_target

S, R = STRIDES, REGRESS_RANGES


def _points(h, w):
    return anchor_points([(-(-h // s), -(-w // s)) for s in S], S)


def test_anchor_points_half_stride_offset_row_major():
    (p,) = anchor_points([(2, 3)], [8])
    assert p.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    (q,) = anchor_points([(1, 2)], [16], dtype=torch.float64)
    assert q.dtype == torch.float64 and q.tolist() == [[8, 8], [24, 8]]


def test_inside_box_is_strict_and_targets_are_ltrb():
    pts = _points(64, 64)  # level 0 has 8 x 8 points at 4, 12, ..., 60
    boxes = torch.tensor([[4.0, 4.0, 28.0, 20.0]])  # x1 = 4 and y1 = 4 fall exactly on points
    labels, targets = assign_targets(pts, boxes, torch.tensor([2]), num_classes=3)
    lvl0 = labels[:64].reshape(8, 8)
    # x in (4, 28) -> 12, 20; y in (4, 20) -> 12: points on the border are not inside
    expected = torch.full((8, 8), 3)
    expected[1, 1:3] = 2
    assert torch.equal(lvl0, expected)
    assert (labels[64:] == 3).all()
    i = 1 * 8 + 1  # point (12, 12)
    assert targets[i].tolist() == [8.0, 8.0, 16.0, 8.0]


def test_regress_range_is_inclusive_at_both_ends():
    pts = _points(256, 256)
    # point (4, 4) of level 0: max distance exactly 64 -> level 0 (upper bound inclusive)
    box = torch.tensor([[0.0, 0.0, 68.0, 68.0]])
    labels, targets = assign_targets(pts, box, torch.tensor([0]), num_classes=1)
    assert labels[0] == 0 and targets[0].max() == 64
    # point (8, 8) of level 1 (index 32*32 + 0): max distance exactly 64 -> level 1 too (lower bound inclusive)
    box = torch.tensor([[0.0, 0.0, 72.0, 72.0]])
    labels, targets = assign_targets(pts, box, torch.tensor([0]), num_classes=1)
    n0 = 32 * 32
    assert labels[n0] == 0 and targets[n0].max() == 64
    # a distance of 64.5 at level 0 is out of its range
    box = torch.tensor([[0.0, 0.0, 68.5, 30.0]])
    labels, _ = assign_targets(pts, box, torch.tensor([0]), num_classes=1)
    assert labels[0] == 1


def test_smallest_area_wins_then_lowest_index():
    pts = _points(64, 64)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0],   # area 1600
                          [8.0, 8.0, 24.0, 24.0],   # area 256, holds point (12, 12) and (20, 20)
                          [0.0, 8.0, 32.0, 16.0],   # area 256 too: tie with box 1 at (12, 12)
                          ])
    labels, targets = assign_targets(pts, boxes, torch.tensor([0, 1, 2]), num_classes=3)
    at = lambda x, y: (y // 8) * 8 + x // 8  # noqa: E731 - level-0 index of point (x, y)
    assert labels[at(12, 12)] == 1  # equal area 256: the lower index (1) wins over box 2
    assert labels[at(28, 12)] == 2  # only boxes 0 and 2 hold it: smaller area
    assert labels[at(36, 36)] == 0
    assert targets[at(12, 12)].tolist() == [4.0, 4.0, 12.0, 12.0]


def test_empty_ground_truth():
    pts = _points(100, 70)
    labels, targets = assign_targets(pts, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long),
                                     num_classes=4)
    total = sum(p.size(0) for p in pts)
    assert labels.shape == (total,) and (labels == 4).all()
    assert targets.shape == (total, 4) and (targets == 0).all()


def test_center_sampling_shrinks_positives_to_the_centre_square():
    pts = _points(64, 64)
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    plain, _ = assign_targets(pts, box, torch.tensor([0]), num_classes=1)
    center, _ = assign_targets(pts, box, torch.tensor([0]), num_classes=1, center_sampling=True)
    # level 0 points inside (0, 40): 4..36 -> 5 x 5; centre square (20 +- 12) -> 12, 20, 28 -> 3 x 3
    assert int((plain == 0).sum()) == 25
    pos = (center == 0).nonzero().squeeze(1)
    assert pos.numel() == 9
    xs = sorted({int(pts[0][i, 0]) for i in pos})
    assert xs == [12, 20, 28]


def test_background_targets_point_at_box_zero_like_the_reference():
    pts = _points(32, 32)
    boxes = torch.tensor([[100.0, 100.0, 120.0, 130.0]])
    labels, targets = assign_targets(pts, boxes, torch.tensor([0]), num_classes=1)
    assert (labels == 1).all()
    assert targets[0].tolist() == [4 - 100.0, 4 - 100.0, 120 - 4.0, 130 - 4.0]


def test_matches_dense_oracle_on_random_crowded_images():
    torch.manual_seed(0)
    pts = _points(320, 448)
    for trial in range(12):
        g = [0, 1, 7, 40, 150, 400][trial % 6]
        xy = torch.rand(g, 2) * torch.tensor([448.0, 320.0])
        wh = torch.rand(g, 2) ** 2 * 500 + 0.5
        if trial % 2:
            xy, wh = torch.round(xy / 4) * 4, torch.round(wh / 8) * 8  # exact ties and edges
        boxes = torch.cat([xy, xy + wh], 1)
        lab = torch.randint(0, 6, (g,))
        for cs in (False, True):
            ours = assign_targets(pts, boxes, lab, num_classes=6, center_sampling=cs)
            ref = dense_assign(pts, boxes, lab, num_classes=6, strides=S, regress_ranges=R,
                               center_sampling=cs)
            assert torch.equal(ours[0], ref[0])
            assert torch.equal(ours[1], ref[1])


def test_batch_assignment_equals_the_dense_oracle_image_by_image():
    """Images of 0, 1, 7, 40 and 150 boxes (an empty one between others) in one call, with and
    without center sampling and with the grids given from the feature sizes, equal the dense
    oracle run on each image alone (labels and every target, background ones included)."""
    torch.manual_seed(1)
    sizes = [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
    pts = anchor_points(sizes, S)
    images = []
    for g in (7, 0, 40, 1, 150):
        xy = torch.round(torch.rand(g, 2) * torch.tensor([448.0, 320.0]) / 4) * 4
        wh = torch.round((torch.rand(g, 2) ** 2 * 400 + 0.5) / 8) * 8 + 1
        images.append((torch.cat([xy, xy + wh], 1), torch.randint(0, 4, (g,))))
    boxes, labels = [b for b, _ in images], [lab for _, lab in images]
    for cs in (False, True):
        for grids in (None, level_grids(sizes, S)):
            lab_b, tgt_b = assign_targets_batch(pts, boxes, labels, num_classes=4, center_sampling=cs,
                                                grids=grids)
            assert lab_b.shape == (5, 2987) and tgt_b.shape == (5, 2987, 4)
            for i, (b, lab) in enumerate(images):
                ref = dense_assign(pts, b, lab, num_classes=4, strides=S, regress_ranges=R, center_sampling=cs)
                assert torch.equal(lab_b[i], ref[0]) and torch.equal(tgt_b[i], ref[1]), (i, cs)
    assert (lab_b[1] == 4).all() and (tgt_b[1] == 0).all()  # the image without boxes


def test_centerness_target():
    t = torch.tensor([[10.0, 10.0, 10.0, 10.0], [2.0, 1.0, 8.0, 4.0]])
    c = centerness_target(t)
    assert torch.allclose(c, torch.tensor([1.0, (0.25 * 0.25) ** 0.5]))


def test_distance2bbox_and_clip():
    pts = torch.tensor([[10.0, 20.0], [5.0, 5.0]])
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 100.0, 100.0]])
    assert distance2bbox(pts, d).tolist() == [[9, 18, 13, 24], [-5, -5, 105, 105]]
    assert distance2bbox(pts, d, max_shape=(50, 60)).tolist() == [[9, 18, 13, 24], [0, 0, 60, 50]]
    batched = distance2bbox(pts[None].repeat(2, 1, 1), d[None].repeat(2, 1, 1))
    assert batched.shape == (2, 2, 4)


def test_aligned_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    assert torch.allclose(aligned_iou(a, b), torch.tensor([1.0, 50.0 / 150.0]))
