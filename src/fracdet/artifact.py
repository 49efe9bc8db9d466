"""One self-describing model file: weights, graphs, architecture, preprocessing, calibration,
operating points, labels, training config, data summary, metrics and package version.

The file (format 3) is a zip archive that any tool can open and that needs no PyTorch to read:

- ``fracdet.json`` — every field of :class:`ModelArtifact` but the binary ones, plus the
  SHA-256 of each binary member;
- ``weights.npz`` — the network's state dict (float16), read with ``allow_pickle=False``;
- ``model.onnx`` — the float32 onnxruntime graph (what ``predict`` runs by default);
- ``int8.onnx`` — the int8 graph, when the model has one;
- ``split.csv`` — the split it was trained with (paths relative to the data's root), when known;
- ``ood.npz`` — the out-of-distribution reference (:mod:`fracdet.ood`), when fitted; a model
  without one skips the feature check (``fracdet info`` says so).

``calibration`` (``{method, params}``, :mod:`fracdet.calibration`) maps the graph's logit to the
probability; files that store a map other than a temperature are written as format 4 (otherwise
identical) so that an older fracdet refuses them rather than apply the temperature alone.

Every model file is untrusted: members are size-limited before they are read, their hashes are
checked, and every field is validated before use (:func:`load_artifact`).  Format 2 files
(``torch.save`` of plain tensors) still load where PyTorch is installed.

The two operations that need PyTorch — rebuilding the network and exporting a graph for an
artifact that has none — are reached by module name (:mod:`fracdet.models.export`), so that
reading a model and predicting with its stored graphs never imports PyTorch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import io
import json
import logging
import math
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fracdet import __version__
from fracdet.fracturemap import check_localisation
from fracdet.calibration import apply_calibration, check_calibration, temperature_calibration
from fracdet.errors import ArtifactError
from fracdet.fsutil import atomic_path
from fracdet.models.registry import list_models
from fracdet.ood import OodReference, reference_from_arrays
from fracdet.transforms import RESIZE_MODES, PreprocessSpec

log = logging.getLogger(__name__)

FORMAT = "fracdet-model"
FORMAT_VERSION = 4  # 3: zip of JSON + npz + ONNX graphs (no PyTorch to read); 2: torch.save (still loads)
# 4: format 3 with a calibration other than a temperature (``calibration``): written only then, so
# that an older fracdet, which would apply the temperature alone, refuses the file instead.
TEMPERATURE_ONLY_VERSION = 3
DEFAULT_MODEL_NAME = "default.fracdet"
KINDS = ("single", "ensemble")
META_MEMBER, WEIGHTS_MEMBER, ONNX_MEMBER, INT8_MEMBER = "fracdet.json", "weights.npz", "model.onnx", "int8.onnx"
SPLIT_MEMBER, OOD_MEMBER = "split.csv", "ood.npz"
MAX_MEMBER_BYTES = {META_MEMBER: 16 << 20, WEIGHTS_MEMBER: 2 << 30, ONNX_MEMBER: 2 << 30, INT8_MEMBER: 2 << 30,
                    SPLIT_MEMBER: 256 << 20, OOD_MEMBER: 64 << 20}
_TORCH_SIDE = "fracdet.models.export"  # imported by name: see the module docstring


@dataclass
class ModelArtifact:
    """Everything needed to rebuild and use a trained classifier.

    ``state_dict`` holds numpy arrays (PyTorch tensors given here are converted); ``onnx`` is
    the float32 graph, ``int8_onnx`` the int8 one; ``sha256`` is the file's hash once loaded."""

    architecture: str
    state_dict: dict[str, Any]
    preprocess: PreprocessSpec
    model_config: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: ["not fractured", "fractured"])
    threshold: float = 0.5
    threshold_rule: str = "default 0.5"
    temperature: float = 1.0
    calibration: dict[str, Any] | None = None  # {method, params} (fracdet.calibration); None: the temperature
    doubt_threshold: float | None = None  # high-sensitivity point; None: same as ``threshold``
    fracture_threshold: float | None = None  # high-specificity point; None: same as ``threshold``
    threshold_note: str = ""  # written rationale of the operating points
    kind: str = "single"  # or "ensemble" (architecture "ensemble", members in model_config)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)  # quantization outcome (fracdet.quantize)
    int8_onnx: bytes | None = None  # the int8 onnxruntime graph
    onnx: bytes | None = None  # the float32 onnxruntime graph (exported on save when missing)
    split_csv: bytes | None = None  # the split it was trained with (fracdet.data.selection.split_manifest)
    ood: dict[str, Any] = field(default_factory=dict)  # how its OOD reference was fitted (fracdet.ood_fit)
    ood_arrays: dict[str, np.ndarray] | None = None  # the reference's validated arrays (ood.npz)
    localisation: dict[str, Any] = field(default_factory=dict)  # map head's box_threshold (fracdet.fracturemap)
    version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    sha256: str = ""  # of the file it was loaded from

    def __post_init__(self) -> None:
        if self.doubt_threshold is None:
            self.doubt_threshold = self.threshold
        if self.fracture_threshold is None:
            self.fracture_threshold = self.threshold
        self.state_dict = {k: _to_numpy(v) for k, v in self.state_dict.items()}

    def calibration_in_use(self) -> dict[str, Any]:
        """The calibration map probabilities are computed with (temperature scaling when the
        artifact stores no other)."""
        if self.calibration and self.calibration.get("method") != "temperature":
            return self.calibration
        return temperature_calibration(self.temperature)

    def set_calibration(self, spec: dict[str, Any]) -> None:
        """Store a calibration map; ``temperature`` keeps T for temperature scaling, else 1."""
        spec = check_calibration(spec)
        self.calibration = spec
        self.temperature = float(spec["params"]["temperature"]) if spec["method"] == "temperature" else 1.0

    def probability(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities of *fractured* from raw logits (float32)."""
        return apply_calibration(logits, self.calibration_in_use())

    def recorded_split(self) -> dict[str, str] | None:
        """The split the model was trained with: {path relative to the data root: split}, or
        None when the model file does not record one."""
        if not self.split_csv:
            return None
        from fracdet.data.selection import read_split_manifest

        try:
            return read_split_manifest(self.split_csv)
        except (UnicodeDecodeError, ValueError, KeyError) as exc:
            raise ArtifactError(f"the model's recorded split is unreadable ({type(exc).__name__})") from None

    def ood_reference(self) -> OodReference | None:
        """The out-of-distribution reference (:mod:`fracdet.ood`), or None when not fitted."""
        return reference_from_arrays(self.ood_arrays) if self.ood_arrays else None

    def set_ood(self, reference: OodReference, info: dict[str, Any]) -> None:
        """Store an OOD reference and how it was fitted."""
        self.ood_arrays = reference.to_arrays()
        self.ood = dict(info)

    def build_model(self) -> Any:
        """The PyTorch network with the stored weights (needs PyTorch)."""
        return importlib.import_module(_TORCH_SIDE).build_model(self)

    def float32_graph(self) -> bytes:
        """The float32 ONNX graph: the stored one, else exported once from the weights
        (PyTorch needed then; cached by content, see :mod:`fracdet.models.export`)."""
        if self.onnx is None:
            self.onnx = importlib.import_module(_TORCH_SIDE).cached_onnx_bytes(self)
        return self.onnx

    def describe(self) -> dict[str, Any]:
        """The metadata without the weights and graphs (for ``fracdet info`` and model cards)."""
        return {
            "architecture": self.architecture,
            "model_config": self.model_config,
            "preprocess": self.preprocess.to_dict(),
            "labels": self.labels,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "temperature": self.temperature,
            "calibration": self.calibration_in_use(),
            "doubt_threshold": self.doubt_threshold,
            "fracture_threshold": self.fracture_threshold,
            "threshold_note": self.threshold_note,
            "kind": self.kind,
            "training": self.training,
            "data": self.data,
            "metrics": self.metrics,
            "int8": self.int8,
            "localisation": self.localisation,
            "ood": self.ood if self.ood_arrays else {},
            "version": self.version,
            "created": self.created,
            "parameters": int(sum(v.size for v in self.state_dict.values() if np.issubdtype(v.dtype, np.floating))),
        }


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a PyTorch tensor, converted without importing PyTorch here
        v = v.detach().cpu()
        return v.float().numpy() if str(v.dtype) == "torch.bfloat16" else v.numpy()
    return np.asarray(v)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(art: ModelArtifact, path: str | Path, half: bool = True) -> Path:
    """Write the artifact atomically (format 3); ``half`` stores float weights as float16.
    An artifact without its float32 graph gets one exported first (PyTorch needed then)."""
    graph = art.float32_graph()
    state = {k: (v.astype(np.float16) if half and np.issubdtype(v.dtype, np.floating) else v)
             for k, v in art.state_dict.items()}
    buf = io.BytesIO()
    np.savez(buf, **state)
    members = {WEIGHTS_MEMBER: buf.getvalue(), ONNX_MEMBER: graph}
    if art.int8_onnx:
        members[INT8_MEMBER] = art.int8_onnx
    if art.split_csv:
        members[SPLIT_MEMBER] = art.split_csv
    if art.ood_arrays:
        ood = io.BytesIO()
        np.savez(ood, **art.ood_arrays)
        members[OOD_MEMBER] = ood.getvalue()
    version = TEMPERATURE_ONLY_VERSION if art.calibration_in_use()["method"] == "temperature" else FORMAT_VERSION
    meta = {"format": FORMAT, "format_version": version, "weights_dtype": "float16" if half else "float32",
            **{k: v for k, v in art.describe().items() if k != "parameters"},
            "members": {name: _sha256(data) for name, data in members.items()}}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(META_MEMBER, json.dumps(meta, indent=1, default=_json_default), zipfile.ZIP_DEFLATED)
            for name, data in members.items():
                z.writestr(name, data)
    log.info("saved model artifact %s", path)
    return Path(path)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (Path, tuple)):
        return str(v) if isinstance(v, Path) else list(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def load_artifact(path: str | Path | None = None) -> ModelArtifact:
    """Read and validate an artifact (the shipped default model when ``path`` is None).
    Raises :class:`ArtifactError` with one line naming the file and the reason."""
    p = Path(path) if path is not None else default_model_path()
    if not p.is_file():
        raise ArtifactError(f"{p}: model file not found")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise ArtifactError(f"{p}: not a fracdet model file (not a zip archive, or truncated)") from None
    with archive:
        names = set(archive.namelist())
        if META_MEMBER in names:
            payload, binaries = _read_v3(p, archive, names)
        elif any(n.endswith("data.pkl") for n in names):
            payload, binaries = _read_v2(p)
        else:
            raise ArtifactError(f"{p}: not a fracdet model file")
    art = _from_payload(p, payload, binaries)
    art.sha256 = _sha256(raw)
    return art


def _read_member(p: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES[name]:
        raise ArtifactError(f"{p}: member {name} is too large ({info.file_size} bytes)")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArtifactError(f"{p}: member {name} is corrupt ({exc})") from None


def _read_v3(p: Path, archive: zipfile.ZipFile, names: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        payload = json.loads(_read_member(p, archive, META_MEMBER))
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{p}: {META_MEMBER} is not valid JSON") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a fracdet model file")
    _check_version(p, payload)
    expected = payload.get("members")
    if not isinstance(expected, dict) or WEIGHTS_MEMBER not in expected or ONNX_MEMBER not in expected:
        raise ArtifactError(f"{p}: the model lists no weights or graph")
    unknown = names - {META_MEMBER, *MAX_MEMBER_BYTES}
    if unknown or set(expected) - set(MAX_MEMBER_BYTES):
        raise ArtifactError(f"{p}: unexpected members {sorted(unknown | (set(expected) - set(MAX_MEMBER_BYTES)))}")
    binaries: dict[str, bytes] = {}
    for name, digest in expected.items():
        if name not in names:
            raise ArtifactError(f"{p}: member {name} is missing (truncated or tampered file)")
        data = _read_member(p, archive, name)
        if _sha256(data) != digest:
            raise ArtifactError(f"{p}: member {name} does not match its recorded SHA-256 (corrupt or tampered)")
        binaries[name] = data
    try:
        with np.load(io.BytesIO(binaries[WEIGHTS_MEMBER]), allow_pickle=False) as npz:
            state = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{p}: weights are unreadable ({exc})") from None
    return payload, {"state_dict": state, "onnx": binaries[ONNX_MEMBER], "int8_onnx": binaries.get(INT8_MEMBER),
                     "split_csv": binaries.get(SPLIT_MEMBER), "ood_arrays": _read_ood(p, binaries.get(OOD_MEMBER))}


def _read_ood(p: Path, data: bytes | None) -> dict[str, np.ndarray] | None:
    """The OOD reference's arrays, validated (:func:`fracdet.ood.reference_from_arrays`)."""
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        reference_from_arrays(arrays)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{p}: invalid model file: {OOD_MEMBER}: {exc}") from None
    return arrays


def _read_v2(p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A format 2 file (``torch.save``), read with ``weights_only=True`` where PyTorch exists."""
    try:
        legacy = importlib.import_module(_TORCH_SIDE)
    except ImportError:
        raise ArtifactError(f"{p}: a format 2 model file needs PyTorch to read; re-save it with "
                            "`fracdet upgrade-model` where PyTorch is installed") from None
    payload = legacy.read_format2(p)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a fracdet model file")
    _check_version(p, payload)
    return payload, {"state_dict": payload.get("state_dict"), "onnx": None, "int8_onnx": payload.get("int8_onnx")}


def _check_version(p: Path, payload: dict[str, Any]) -> None:
    try:
        version = int(payload.get("format_version", 0))
    except (TypeError, ValueError):
        raise ArtifactError(f"{p}: invalid format_version") from None
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{p}: model format {version} is newer than this fracdet supports "
                            f"({FORMAT_VERSION}); upgrade fracdet")


def _from_payload(p: Path, payload: dict[str, Any], binaries: dict[str, Any]) -> ModelArtifact:
    """Validate every field, then build the artifact."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{p}: invalid model file: {what}")

    kind = payload.get("kind", "single")
    if kind not in KINDS:
        raise bad(f"kind {kind!r} (expected one of {', '.join(KINDS)})")
    arch = payload.get("architecture")
    if kind == "single" and arch not in list_models():
        raise bad(f"unknown architecture {arch!r}")
    if kind == "ensemble" and arch != "ensemble":
        raise bad(f"an ensemble's architecture must be 'ensemble', not {arch!r}")
    try:
        pre = PreprocessSpec.from_dict(payload["preprocess"])
    except (KeyError, TypeError, ValueError):
        raise bad("preprocess") from None
    if not (8 <= pre.input_size <= 4096 and pre.channels in (1, 3) and pre.resize in RESIZE_MODES
            and len(pre.mean) >= pre.channels and len(pre.std) >= pre.channels
            and all(math.isfinite(s) and s > 0 for s in pre.std) and all(math.isfinite(m) for m in pre.mean)):
        raise bad(f"preprocess {pre.to_dict()}")
    labels = payload.get("labels", ["not fractured", "fractured"])
    if not (isinstance(labels, list) and len(labels) == 2 and all(isinstance(x, str) and x for x in labels)):
        raise bad("labels (two names expected)")
    numbers = {}
    for key, default in (("threshold", 0.5), ("temperature", 1.0), ("doubt_threshold", None),
                         ("fracture_threshold", None)):
        v = payload.get(key, default)
        if v is None:
            numbers[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{key} {v!r}")
        numbers[key] = float(v)
    for key in ("threshold", "doubt_threshold", "fracture_threshold"):
        if numbers[key] is not None and not 0.0 <= numbers[key] <= 1.0:
            raise bad(f"{key} {numbers[key]} outside [0, 1]")
    if not 0.0 < numbers["temperature"] <= 1000.0:
        raise bad(f"temperature {numbers['temperature']}")
    calibration = None
    if payload.get("calibration") is not None:
        try:
            calibration = check_calibration(payload["calibration"])
        except (ValueError, TypeError, OverflowError) as exc:
            raise bad(str(exc)) from None
        if calibration["method"] == "temperature":
            numbers["temperature"] = calibration["params"]["temperature"]
    dicts = {}
    for key in ("model_config", "training", "data", "metrics", "int8", "ood"):
        v = payload.get(key, {})
        if not isinstance(v, dict):
            raise bad(f"{key} is not a mapping")
        dicts[key] = dict(v)
    if payload.get("localisation") not in (None, {}):
        try:
            dicts["localisation"] = check_localisation(payload["localisation"])
        except ValueError as exc:
            raise bad(str(exc)) from None
    state = binaries["state_dict"]
    if not isinstance(state, dict) or not state:
        raise bad("no weights")
    return ModelArtifact(
        architecture=str(arch), state_dict=state, preprocess=pre, labels=list(labels),
        threshold=numbers["threshold"], threshold_rule=str(payload.get("threshold_rule", "")),
        temperature=numbers["temperature"], calibration=calibration, doubt_threshold=numbers["doubt_threshold"],
        fracture_threshold=numbers["fracture_threshold"], threshold_note=str(payload.get("threshold_note", "")),
        kind=kind, **dicts, int8_onnx=binaries.get("int8_onnx"), onnx=binaries.get("onnx"),
        split_csv=binaries.get("split_csv"), ood_arrays=binaries.get("ood_arrays"),
        version=str(payload.get("version", "")), created=str(payload.get("created", "")),
    )


def default_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(str(resources.files("fracdet") / "weights" / DEFAULT_MODEL_NAME))
