"""Datasets: readers (COCO / VOC / YOLO / dataset YAML), transforms, torch Dataset and loader."""
from fcosdet.data.dataset import Batch, DetectionDataset, build_loader, collate, pad_images
from fcosdet.data.readers import (
    detect_layout,
    image_size,
    load_dataset_spec,
    read_coco,
    read_voc,
    read_yolo,
    summarize_problems,
    verify_images,
)
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.transforms import (
    DetectionTransform,
    build_transforms,
    denormalize_image,
    keep_ratio_size,
    load_image,
    normalize_image,
    to_rgb8,
)

__all__ = [
    "Batch", "DatasetSplit", "DetectionDataset", "DetectionTransform", "ImageRecord", "build_loader",
    "build_transforms", "collate", "denormalize_image", "detect_layout", "image_size", "keep_ratio_size",
    "load_dataset_spec", "load_image", "normalize_image", "pad_images", "read_coco", "read_voc",
    "read_yolo",
    "summarize_problems", "to_rgb8", "verify_images",
]
