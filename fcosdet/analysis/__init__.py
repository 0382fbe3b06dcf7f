"""See what the detector learns: label assignment, dataset statistics, evaluation diagnostics
and the run report. Every number here comes from the objects training and evaluation use (the
criterion `build_criterion` makes, with its points from `model.points`; the evaluation transform;
`assign_targets_batch`; pycocotools)."""
