"""See what the detector learns: label assignment, dataset statistics, evaluation diagnostics
and the run report. Every number here comes from the functions training and evaluation use
(`anchor_points`, `assign_targets_batch`, the transforms, pycocotools)."""
