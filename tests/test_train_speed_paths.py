"""Training speed paths change nothing but speed: channels_last weights and activations and the
fused SGD step give the losses and updated weights of the plain path within float rounding,
with the same state_dict."""
import torch
from torchvision.ops import FrozenBatchNorm2d

from fcosdet.data.loader import Batch
from fcosdet.engine.loop import StepContext, train_step
from fcosdet.engine.optim import build_optimizer
from fcosdet.model.build import build_criterion, build_model, training_model, uses_channels_last
from fcosdet.presets import preset


def _config(norm: str = "frozen_bn"):
    cfg = preset("fcos_r18_cpu")
    cfg.model.num_classes, cfg.model.backbone_norm, cfg.model.frozen_stages = 3, norm, 1
    cfg.model.fpn_channels = cfg.model.feat_channels = 32
    cfg.model.stacked_convs = 1
    return cfg


def _model(cfg, seed: int = 0):
    """A small random FCOS whose frozen BatchNorm is far from the identity (a real per-channel affine)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.train()


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 128, 192, generator=g)  # (B, 3, H, W)
    targets = [{"boxes": torch.tensor([[10.0, 20, 90, 120], [100, 30, 180, 120]]), "labels": torch.tensor([0, 2]),
                "path": "a.jpg"},
               {"boxes": torch.tensor([[30.0, 40, 70, 100]]), "labels": torch.tensor([1]), "path": "b.jpg"}]
    return Batch(images=images, targets=targets)


def test_training_model_steps_equal_the_plain_path():
    """Three SGD steps through train_step: the training model (channels_last, fused SGD) gives the plain path's losses and weights within float rounding."""
    cfg = _config()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_channels_last(cfg.train, cpu) and not uses_channels_last(cfg.train, cuda)  # the default: null
    runs = {}
    start = {k: v.clone() for k, v in _model(cfg).state_dict().items()}
    for fast in (False, True):
        cfg.train.channels_last = fast
        model = _model(cfg)
        model = training_model(model, cfg.train, cpu) if fast else model
        optimizer = build_optimizer(model, lr=0.01, fused=fast)
        assert bool(optimizer.defaults["fused"]) is fast
        ctx = StepContext(model=model, criterion=build_criterion(cfg.model), optimizer=optimizer,
                          scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0), scaler=None,
                          device=cpu, amp_dtype=None, grad_clip=35.0,
                          channels_last=fast)
        losses = [train_step(ctx, _batch(seed=i), i) for i in range(3)]
        runs[fast] = losses, {k: v.contiguous() for k, v in model.state_dict().items()}
    (plain_losses, plain_state), (fast_losses, fast_state) = runs[False], runs[True]
    assert fast_state.keys() == plain_state.keys()
    for a, b in zip(fast_losses, plain_losses):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * abs(b[k]) + 1e-6, (k, a[k], b[k])
    moved = 0
    for k in plain_state:
        if not plain_state[k].is_floating_point():
            assert torch.equal(fast_state[k], plain_state[k]), k
            continue
        # the update of each tensor over the three steps, in norm: float rounding of the gradients
        # (summed in another order) moves each weight by a tiny fraction of its update
        want, got = plain_state[k] - start[k], fast_state[k] - start[k]
        assert float((got - want).norm()) <= 2e-3 * float(want.norm()) + 1e-9, k
        moved += bool(want.norm() > 0)
    # every trainable tensor moved but the Scales of the levels without positives (P5-P7 here:
    # no gradient, no decay), and no frozen one
    assert moved == sum(p.requires_grad for p in model.parameters()) - 3
