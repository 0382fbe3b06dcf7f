"""COCO evaluation (reset / process / evaluate)."""
