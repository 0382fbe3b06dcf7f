"""Run by tests/test_distributed.py, alone or under `torchrun --nproc-per-node 2`.

Builds the same small FCOS (GroupNorm everywhere: nothing depends on the split), takes the same
4 bccd images (all 640x480, so padding is the same) and writes the worker-averaged losses and
the gradients after one DDP backward to OUT (rank 0), for comparison with one process.
"""
import sys

import torch

from fcosdet import distributed as D
from fcosdet.data import DetectionDataset, build_transforms, collate, load_dataset_spec
from fcosdet.model.build import build_criterion, build_model
from fcosdet.presets import preset


def main(data_dir: str, out: str) -> None:
    device = D.init_from_env("cpu")
    cfg = preset("fcos_r18_cpu")
    cfg.model.num_classes = 3
    cfg.model.fpn_channels = cfg.model.feat_channels = 32
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    split = load_dataset_spec(data_dir, "val")
    split.records = split.records[:4]
    ds = DetectionDataset(split, transforms=build_transforms(train=False, scale=(320, 240), normalize="pytorch"))
    world, rank = D.world_size(), D.rank()
    per = 4 // world
    batch = collate([ds[i] for i in range(rank * per, (rank + 1) * per)])
    if D.is_distributed():
        model = torch.nn.parallel.DistributedDataParallel(model)
    losses = build_criterion(cfg.model)(model(batch.images), batch.targets)
    sum(losses.values()).backward()
    values = {k: D.reduce_mean(v.detach()) for k, v in losses.items()}
    if D.is_main_process():
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads = {n.removeprefix("module."): g for n, g in grads.items()}
        torch.save({"losses": values, "grads": grads, "world": world}, out)
    D.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
