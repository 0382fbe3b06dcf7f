"""Datasets: readers (COCO / VOC / YOLO / dataset YAML), image files, validation, transforms,
torch Dataset and loader."""
from fcosdet.data.coco import read_coco
from fcosdet.data.images import image_size, load_image, to_rgb8, verify_images
from fcosdet.data.layout import detect_layout, load_dataset_spec
from fcosdet.data.loader import (
    Batch,
    DetectionDataset,
    build_loader,
    collate,
    pad_images,
)
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.transforms import (
    DetectionTransform,
    build_transforms,
    denormalize_image,
    keep_ratio_size,
    normalize_image,
)
from fcosdet.data.validate import summarize_problems
from fcosdet.data.voc import read_voc
from fcosdet.data.yolo import read_yolo

__all__ = [
    "Batch", "DatasetSplit", "DetectionDataset", "DetectionTransform", "ImageRecord", "build_loader",
    "build_transforms", "collate", "denormalize_image", "detect_layout", "image_size", "keep_ratio_size",
    "load_dataset_spec", "load_image", "normalize_image", "pad_images", "read_coco", "read_voc",
    "read_yolo",
    "summarize_problems", "to_rgb8", "verify_images",
]
