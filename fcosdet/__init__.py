"""fcosdet: FCOS anchor-free object detection (train, evaluate, predict)."""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Detector":  # imported lazily: `import fcosdet` stays light
        from fcosdet.deploy.predictor import Detector
        return Detector
    raise AttributeError(name)
