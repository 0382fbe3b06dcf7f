"""A straightforward (P, G, 4) target assignment, written from the seed's description.

Used only as a test oracle and as the baseline of benchmarks/assign_targets.py: it builds the
reference's broadcast tensors, which is what fcosdet.model.targets.assign_targets avoids.
Dimensions: P points, G boxes.
"""
import torch

INF = 1e8


@torch.no_grad()
def dense_assign(points, gt_boxes, gt_labels, *, num_classes, strides, regress_ranges,
                 center_sampling=False, center_sample_radius=1.5):
    num_per_lvl = [p.size(0) for p in points]
    ranges = torch.cat([p.new_tensor(r)[None].expand_as(p) for p, r in zip(points, regress_ranges)])  # (P, 2)
    pts = torch.cat(points)  # (P, 2)
    n, g = pts.size(0), gt_boxes.size(0)
    if g == 0:
        return gt_labels.new_full((n,), num_classes), gt_boxes.new_zeros((n, 4))
    areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].repeat(n, 1)  # (P, G)
    ranges = ranges[:, None, :].expand(n, g, 2)  # (P, G, 2)
    boxes = gt_boxes[None].expand(n, g, 4)  # (P, G, 4)
    xs = pts[:, 0, None].expand(n, g)
    ys = pts[:, 1, None].expand(n, g)
    targets = torch.stack((xs - boxes[..., 0], ys - boxes[..., 1], boxes[..., 2] - xs, boxes[..., 3] - ys), -1)
    if center_sampling:
        cx = (boxes[..., 0] + boxes[..., 2]) / 2
        cy = (boxes[..., 1] + boxes[..., 3]) / 2
        stride = cx.new_zeros(cx.shape)
        start = 0
        for lvl, m in enumerate(num_per_lvl):
            stride[start:start + m] = strides[lvl] * center_sample_radius
            start += m
        c = torch.zeros_like(boxes)
        c[..., 0] = torch.where(cx - stride > boxes[..., 0], cx - stride, boxes[..., 0])
        c[..., 1] = torch.where(cy - stride > boxes[..., 1], cy - stride, boxes[..., 1])
        c[..., 2] = torch.where(cx + stride > boxes[..., 2], boxes[..., 2], cx + stride)
        c[..., 3] = torch.where(cy + stride > boxes[..., 3], boxes[..., 3], cy + stride)
        cb = torch.stack((xs - c[..., 0], ys - c[..., 1], c[..., 2] - xs, c[..., 3] - ys), -1)
        inside = cb.min(-1)[0] > 0
    else:
        inside = targets.min(-1)[0] > 0
    maxd = targets.max(-1)[0]
    in_range = (maxd >= ranges[..., 0]) & (maxd <= ranges[..., 1])
    areas[inside == 0] = INF
    areas[in_range == 0] = INF
    min_area, idx = areas.min(dim=1)
    labels = gt_labels[idx]
    labels[min_area == INF] = num_classes
    return labels, targets[range(n), idx]


def reference_loss(cls_scores, bbox_preds, centernesses, gt_boxes, gt_labels, *, num_classes,
                   strides, regress_ranges, norm_on_bbox=False, center_sampling=False,
                   alpha=0.25, gamma=2.0):
    """The seed's FCOSHead.loss on one process, with mmdet's python focal loss and IoU loss."""
    points = []
    for x, s in zip(cls_scores, strides):
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        points.append(torch.stack((xx.reshape(-1) * s, yy.reshape(-1) * s), -1) + s // 2)
    per_img = [dense_assign(points, b, l, num_classes=num_classes, strides=strides,
                            regress_ranges=regress_ranges, center_sampling=center_sampling)
               for b, l in zip(gt_boxes, gt_labels)]
    sizes = [p.size(0) for p in points]
    labels = torch.cat([torch.cat([pi[0].split(sizes)[i] for pi in per_img]) for i in range(len(points))])
    targets = torch.cat([torch.cat([pi[1].split(sizes)[i] for pi in per_img]) / (strides[i] if norm_on_bbox else 1)
                         for i in range(len(points))])
    b = cls_scores[0].size(0)
    fc = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, num_classes) for c in cls_scores])
    fb = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 4) for c in bbox_preds])
    fz = torch.cat([c.permute(0, 2, 3, 1).reshape(-1) for c in centernesses])
    fp = torch.cat([p.repeat(b, 1) for p in points])
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().reshape(-1)
    num_pos = max(float(len(pos)), 1.0)
    t = torch.nn.functional.one_hot(labels, num_classes + 1)[:, :num_classes].float()
    p = fc.sigmoid()
    pt = (1 - p) * t + p * (1 - t)
    fw = (alpha * t + (1 - alpha) * (1 - t)) * pt.pow(gamma)
    loss_cls = (torch.nn.functional.binary_cross_entropy_with_logits(fc, t, reduction="none") * fw).sum() / num_pos
    if len(pos) == 0:
        return {"loss_cls": loss_cls, "loss_bbox": fb[pos].sum(), "loss_centerness": fz[pos].sum()}
    pt_ = targets[pos]
    lr, tb = pt_[:, [0, 2]], pt_[:, [1, 3]]
    ctr = torch.sqrt(lr.min(-1)[0] / lr.max(-1)[0] * (tb.min(-1)[0] / tb.max(-1)[0]))
    pp = fp[pos]

    def dec(d):
        return torch.stack((pp[:, 0] - d[:, 0], pp[:, 1] - d[:, 1], pp[:, 0] + d[:, 2], pp[:, 1] + d[:, 3]), -1)
    a, g = dec(fb[pos]), dec(pt_)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    wh = (torch.min(a[:, 2:], g[:, 2:]) - torch.max(a[:, :2], g[:, :2])).clamp(min=0)
    ov = wh[:, 0] * wh[:, 1]
    iou = ov / (area_a + area_g - ov).clamp(min=1e-6)
    loss_bbox = (-iou.clamp(min=1e-6).log() * ctr).sum() / max(ctr.sum().item(), 1e-6)
    loss_ctr = torch.nn.functional.binary_cross_entropy_with_logits(fz[pos], ctr, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}
