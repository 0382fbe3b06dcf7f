"""Model files: a training checkpoint (`.pt`), an exported weights file (`.safetensors`:
weights plus config and class names in its metadata), an exported ONNX graph (`.onnx`) or
OpenVINO IR (`.xml` + `.bin`; its metadata in the rt_info section IR_SECTION), fp32 or int8
(metadata only here; onnxruntime / OpenVINO run the graph), or an exported torch.export program
(`.pt2`: a zip archive; fcosdet reads its metadata entry and the safetensors copy of the
weights that `fcosdet export --format program` adds, never the program itself).

`ModelFile` is the one typed form of all four, and this module the only place that calls
`torch.load`: always with `weights_only=True`, so a file holding anything but tensors and plain
Python values (dict, list, tuple, str, int, float, bool, None) is refused and nothing in it runs.
A `.pt2` is never given to `torch.export.load` (which unpickles with weights_only=False).
Checkpoints are written atomically with the user's umask.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pickle
import secrets
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torch.export.pt2_archive.constants import EXTRA_DIR

from fcosdet import __version__
from fcosdet.errors import UserError

MODEL_SUFFIXES = (".pt", ".pth", ".safetensors", ".onnx", ".pt2", ".xml")
GRAPH_SUFFIXES = (".onnx", ".xml")  # whole-detector graphs: run by onnxruntime / OpenVINO on the CPU
META_PREFIX = "fcosdet."  # keys of the metadata that exported files carry (JSON values)
IR_SECTION = "fcosdet"  # an OpenVINO IR's rt_info section holding the metadata (keys without META_PREFIX)
# what an exported graph's (ONNX / IR) metadata must hold for fcosdet to run it
_ONNX_REQUIRED = ("class_names", "config", "normalize", "scale", "strides", "test")
# a .pt2 program's extra file (torch.export.load(...) returns it in extra_files): JSON of encode_metadata(...)
PROGRAM_METADATA = "fcosdet_metadata.json"
# the safetensors copy of the network's weights inside a .pt2 archive, under its root folder
PROGRAM_WEIGHTS = "fcosdet/weights.safetensors"


# ----------------------------------------------------------------------------- foreign files


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): one error line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_tensor_file(path: str | Path, *, unreadable: Callable[[Exception], str],
                     refused: Callable[[pickle.UnpicklingError], str] | None = None) -> Any:
    """Any file of tensors and plain values (a state_dict, another library's checkpoint), read on
    the CPU with torch.load(weights_only=True): nothing in it runs. A failure is one UserError:
    `refused(exc)` when the file holds other Python objects (a global outside torch's weights-only
    allow-list; `unreadable` when not given), `unreadable(exc)` for anything else (a missing,
    truncated or foreign file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError((refused or unreadable)(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(unreadable(exc)) from None


def strip_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state_dict saved from a DistributedDataParallel / DataParallel wrapper ("module.x") -> the bare names."""
    return {k.removeprefix("module."): v for k, v in state.items()}


# ----------------------------------------------------------------------------- atomic writes


def _temporary_file(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created with mode 0o666 minus the umask (like any output)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise UserError(f"cannot create a temporary file beside {path}; clean up {path.parent}")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save `state` to a temporary file in the same folder, then rename it over `path`: a
    crash or a full disk leaves the previous `path` intact. A failed write is a UserError
    naming the file."""
    path = Path(path)
    # serialise in memory first: torch's zip writer turns a failed write (a full disk) into a
    # RuntimeError about stream positions, while a plain file write raises OSError (ENOSPC)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_file(path)
    except OSError as exc:
        raise UserError(f"cannot write checkpoint {path} ({exc.strerror or exc}); choose a writable "
                        f"--run-dir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        kept = f"the previous {path.name} is kept" if path.exists() else "no checkpoint was written"
        raise UserError(f"cannot write checkpoint {path} ({exc.strerror or exc}); {kept}. "
                        f"{'Free disk space' if full else 'Check the folder'} and rerun with --resume"
                        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- metadata


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """{"class_names": [...]} -> {"fcosdet.class_names": "[...]"}: what exported files store."""
    return {f"{META_PREFIX}{key}": json.dumps(value) for key, value in values.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """The fcosdet.* entries of a file's metadata, JSON-decoded, without the prefix."""
    return {k.removeprefix(META_PREFIX): json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}


def read_onnx_metadata(props: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The fcosdet.* metadata of an exported graph (ONNX metadata_props, or `ir_metadata_props` of
    an OpenVINO IR), decoded; an error for other ONNX / IR files."""
    meta = decode_metadata(props)
    missing = set(_ONNX_REQUIRED) - set(meta)
    if missing:
        kind, fmt = ("OpenVINO IR", "openvino") if Path(path).suffix == ".xml" else ("ONNX file", "onnx")
        raise UserError(f"{path} is not an {kind} exported by fcosdet (metadata {sorted(missing)} "
                        f"missing); export it with `fcosdet export CHECKPOINT --format {fmt}`")
    return meta


def write_ir_metadata(model: Any, values: Mapping[str, Any]) -> None:
    """Put `encode_metadata(values)` into an openvino.Model's rt_info section IR_SECTION."""
    for key, value in encode_metadata(values).items():
        model.set_rt_info(value, [IR_SECTION, key.removeprefix(META_PREFIX)])


def ir_metadata_props(model: Any, path: Path) -> dict[str, str]:
    """The encoded fcosdet.* entries of an openvino.Model's rt_info (what `write_ir_metadata` wrote):
    strings only, for `decode_metadata`; anything else there is an error naming the file."""
    if not model.has_rt_info(IR_SECTION):
        return {}
    section = model.get_rt_info(IR_SECTION).value
    if not isinstance(section, dict) or not all(isinstance(v, str) for v in section.values()):
        raise UserError(f"{path}: its rt_info section {IR_SECTION!r} is not fcosdet's (string entries); "
                        f"export it again with `fcosdet export CHECKPOINT --format openvino`")
    return {f"{META_PREFIX}{key}": value for key, value in section.items()}


def read_ir(path: Path) -> tuple[Any, dict[str, Any]]:
    """(openvino.Model, decoded fcosdet.* metadata) of an exported OpenVINO IR (.xml beside its .bin).
    OpenVINO reads the IR as data: nothing in it runs."""
    if not path.is_file():
        raise UserError(f"OpenVINO IR {path} does not exist; check the path")
    try:
        import openvino as ov
        model = ov.Core().read_model(str(path))
    except ImportError as exc:
        raise UserError(f"{path} is an OpenVINO IR: reading it needs openvino ({exc}); pip install openvino"
                        ) from None
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad file for the user
        raise UserError(f"cannot load OpenVINO IR {path} ({type(exc).__name__}: {error_line(exc)}); it needs "
                        f"its {path.with_suffix('.bin').name} beside it: export it again with "
                        f"`fcosdet export CHECKPOINT --format openvino`") from None
    return model, read_onnx_metadata(ir_metadata_props(model, path), path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The dict of a `.pt` checkpoint (weights_only=True); it must hold a "model" entry."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a run folder's last.pt or best.pt")
    state = read_tensor_file(
        path, refused=lambda exc: (
            f"refusing checkpoint {path}: it holds Python objects other than tensors and plain values "
            f"(which could run code when loaded), or it is damaged; fcosdet reads checkpoints with "
            f"weights_only=True: use one written by this fcosdet version, from a source you trust"),
        unreadable=lambda exc: (f"cannot read checkpoint {path} ({error_line(exc)}); it may be truncated: "
                                f"use the run's other checkpoint (last.pt / best.pt)"))
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not an fcosdet checkpoint (no 'model' entry)")
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, decoded fcosdet.* metadata) of an exported `.safetensors` file. Safe: safetensors runs no code."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = decode_metadata(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read weights file {path} ({exc}); export it again with "
                        f"`fcosdet export CHECKPOINT --format weights`") from None
    if "config" not in meta or "class_names" not in meta:
        raise UserError(f"{path} has no fcosdet config / class names in its metadata: not a file written "
                        f"by `fcosdet export --format weights`")
    return tensors, meta


def _read_onnx(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; check the path")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad file for the user
        raise UserError(f"cannot load ONNX file {path} ({type(exc).__name__}: {error_line(exc)}); "
                        f"export it again with `fcosdet export CHECKPOINT --format onnx`") from None
    return read_onnx_metadata(props, path)


def _program_entries(archive: zipfile.ZipFile) -> tuple[str | None, str | None]:
    """The archive names of (fcosdet's metadata, fcosdet's weights) in a .pt2 zip; None when absent."""
    names = archive.namelist()
    root = names[0].split("/")[0] if names else ""  # torch.export puts every entry under one folder
    found = set(names)
    meta, weights = f"{root}/{EXTRA_DIR}{PROGRAM_METADATA}", f"{root}/{PROGRAM_WEIGHTS}"
    return (meta if meta in found else None), (weights if weights in found else None)


def _read_program(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, decoded fcosdet.* metadata) of a `.pt2` written by `fcosdet export --format program`,
    read with zipfile and safetensors: the program (pickles, graph) is never loaded."""
    if not path.is_file():
        raise UserError(f"program file {path} does not exist; check the path")
    again = "export it again with `fcosdet export CHECKPOINT --format program`"
    try:
        with zipfile.ZipFile(path) as archive:
            meta_entry, weights_entry = _program_entries(archive)
            if meta_entry is None:
                raise UserError(f"{path} is not a torch.export program written by fcosdet (no {PROGRAM_METADATA} "
                                f"entry); give a .pt2 from `fcosdet export CHECKPOINT --format program`")
            if weights_entry is None:
                raise UserError(f"{path} holds no safetensors copy of its weights (exported by an older "
                                f"fcosdet); {again}")
            meta = decode_metadata(json.loads(archive.read(meta_entry)))
            blob = archive.read(weights_entry)
    # ValueError / TypeError / AttributeError: a metadata entry that is not fcosdet's JSON
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read program file {path} ({error_line(exc)}); {again}") from None
    try:
        tensors = safetensors.torch.load(blob)
    except SafetensorError as exc:
        raise UserError(f"refusing {path}: its {PROGRAM_WEIGHTS} entry is not a safetensors file of plain "
                        f"tensors ({error_line(exc)}); fcosdet loads nothing else from a .pt2: {again}") from None
    if "config" not in meta or "class_names" not in meta:
        raise UserError(f"{path} has no fcosdet config / class names in its {PROGRAM_METADATA}; {again}")
    return tensors, meta


# ----------------------------------------------------------------------------- the model file


@dataclass(kw_only=True)
class ModelFile:
    """An fcosdet model file: what inference needs, and what a run's last.pt / best.pt add for resuming."""
    model: dict[str, Tensor]  # the network's state_dict (the EMA weights when trained with EMA); {} for ONNX
    config: dict[str, Any]  # Config.to_dict() of the model as trained / imported
    class_names: list[str]  # one per label, labels in [0, C)
    category_ids: list[int] | None = None  # the dataset's id of each label (COCO data, or imported); None: label + 1
    category_ids_saved: bool = True  # False: a file from before fcosdet saved them (ids unknown: predict warns)
    imported_from: str | None = None  # "torchvision-fcos:SOURCE" / "mmdet-fcos:SOURCE" for imported files
    # training state (a run's checkpoints only)
    raw_model: dict[str, Tensor] | None = None  # with EMA: the trained (not averaged) weights a resume continues
    ema_updates: int | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # the fp16 GradScaler's state
    epoch: int | None = None
    iteration: int | None = None
    epoch_iter: int | None = None  # batches done in the current epoch (a mid-epoch checkpoint)
    best_ap: float | None = None
    history: list[dict[str, Any]] | None = None  # per evaluation: {"epoch", "AP", ...}
    rng: dict[str, Any] | None = None  # engine.checkpoint.rng_state()
    path: Path | None = dataclasses.field(default=None, compare=False)  # where it was read from; not written

    def __post_init__(self) -> None:
        ids = self.category_ids
        if ids is not None and (len(ids) != len(self.class_names) or not all(isinstance(i, int) for i in ids)):
            raise UserError(f"the model file's category_ids ({len(ids)}) do not give one integer id per class "
                            f"({len(self.class_names)}); import or train the model again")

    # -- reading

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        """A `.pt` / `.pth` checkpoint, an exported `.safetensors` weights file or `.pt2` program
        (its metadata and weights copy), or an exported `.onnx` graph (its metadata: `model` is
        empty, see `require_weights`)."""
        path = Path(path)
        if path.suffix in (".safetensors", ".pt2"):
            tensors, meta = (_read_safetensors if path.suffix == ".safetensors" else _read_program)(path)
            return cls.from_metadata(meta, model=tensors, path=path)
        if path.suffix == ".onnx":
            return cls.from_metadata(_read_onnx(path), model={}, path=path)
        if path.suffix == ".xml":
            return cls.from_metadata(read_ir(path)[1], model={}, path=path)
        return cls.from_state(_read_checkpoint(path), path=path)

    @classmethod
    def from_state(cls, state: dict[str, Any], *, path: Path | None = None) -> ModelFile:
        """The dict a `.pt` file holds -> a ModelFile (unknown keys are ignored)."""
        missing = [key for key in ("model", "config", "class_names") if key not in state]
        if missing:
            raise UserError(f"{path or 'the model file'} has no {' / '.join(missing)}: give an fcosdet "
                            f"checkpoint or a file written by `fcosdet import-weights`")
        names = {f.name for f in dataclasses.fields(cls)} - {"category_ids_saved", "path"}
        return cls(**{k: v for k, v in state.items() if k in names},
                   category_ids_saved="category_ids" in state, path=path)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, model: dict[str, Tensor],
                      path: Path | None = None) -> ModelFile:
        """The decoded fcosdet.* metadata of an exported file (see `metadata`) and its weights -> a ModelFile."""
        return cls(model=model, config=meta["config"], class_names=list(meta["class_names"]),
                   category_ids=meta.get("category_ids"), category_ids_saved="category_ids" in meta, path=path)

    def require_weights(self) -> None:
        """An error unless the file holds the network's weights (an ONNX / IR graph's are inside its graph)."""
        if not self.model:
            raise UserError(f"{self.path} is an exported graph (ONNX / OpenVINO IR): it runs through Detector.from_file / fcosdet "
                            f"predict / eval, but holds no PyTorch weights; use the .pt, .safetensors or .pt2 "
                            f"file here")

    # -- writing

    def metadata(self) -> dict[str, Any]:
        """What an exported file (.safetensors, .onnx, .pt2) records about the model, before `encode_metadata`."""
        return {"config": self.config, "class_names": self.class_names, "category_ids": self.category_ids,
                "version": __version__}

    def to_state(self) -> dict[str, Any]:
        """The dict a `.pt` file holds: tensors and plain values only (torch.load(weights_only=True)
        reads it). Unset training fields are left out; "category_ids" is written when saved (None included)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("category_ids", "category_ids_saved", "path") and getattr(self, f.name) is not None}
        if self.category_ids_saved:
            state["category_ids"] = self.category_ids
        return state

    def save(self, path: str | Path) -> Path:
        """`.safetensors`: the weights, with `metadata()` (no training state); any other suffix:
        a `.pt` checkpoint, written atomically."""
        path = Path(path)
        if path.suffix == ".safetensors":
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file(tensors, str(path), metadata=encode_metadata(self.metadata()))
        else:
            save_atomic(self.to_state(), path)
        return path

    def save_program(self, program: torch.export.ExportedProgram, path: str | Path, *,
                     metadata: Mapping[str, Any] | None = None) -> Path:
        """A torch.export program as `.pt2` (torch.export.save), with `metadata` (default
        `metadata()`) as its extra file PROGRAM_METADATA and a safetensors copy of the weights at
        PROGRAM_WEIGHTS: what `load` reads back without loading the program."""
        path = Path(path)
        extra = {PROGRAM_METADATA: json.dumps(encode_metadata(self.metadata() if metadata is None else metadata))}
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files=extra)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.items()}
        with zipfile.ZipFile(buffer, "a") as archive:
            root = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{root}/{PROGRAM_WEIGHTS}", safetensors.torch.save(tensors))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        return path
