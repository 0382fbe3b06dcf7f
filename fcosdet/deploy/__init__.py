"""Deployment: the detector graph, inference backends, the fast path, exporters and `Detector`."""
