"""The typed model manifest, `models/<name>/model.yaml`: what a model version is and where it may run.

The manifest pins the artifact's digest and size, so a signature over the manifest's bytes
vouches for the model file too. Unknown keys are errors: a typo must never silently drop a field.

`format` versions the manifest's shape. Format 1 is written without the key, so manifests stay byte-identical
to what agents before it read; a later format names itself, and an agent refuses a format newer than
MANIFEST_FORMAT with a message naming the agent version the manifest asks for, instead of failing on a key it
does not know. The controller raises `min_agent_version` to what the fields it writes need.

Format 2 (agent 0.3.0) adds `evaluation`: metrics measured by `edgefleet model evaluate` on an evaluation set pinned
by its digest. Metrics under the top-level `metrics` are declared (typed in with `edgefleet model add --metric`);
the two never name the same metric, so a signed manifest says which of its numbers were measured and on what.
A manifest without `evaluation` is still format 1, written exactly as before.

Format 3 (agent 0.4.0) adds `variants`: other builds of the same version (int8, fp16) built from the reference by
`edgefleet model variant add`, each pinned by digest and size like the reference, with the hardware it needs and how
it compared with the reference on the evaluation set. The reference stays the top-level `file`, so code that knows
nothing of variants keeps serving it; a manifest without variants is written exactly as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import semver
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edgefleet_agent.contract import yamlfile
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError, FormatError, from_validation_error

MANIFEST_FORMAT = 3  # 2: `evaluation` (agent 0.3.0); 3: `variants` (agent 0.4.0)
MANIFEST_FILE = "model.yaml"
SIGNATURE_FILE = "model.yaml.sig"

ElementType = Literal[
    "float32",
    "float16",
    "float64",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]
Arch = Literal["amd64", "arm64", "armv7"]

# onnxruntime's execution provider names; a target lists them in order of preference.
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "XnnpackExecutionProvider",
    "ArmNNExecutionProvider",
    "ACLExecutionProvider",
    "DmlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
)

# The agent version that first reads each manifest field added after format 1's: a manifest that uses one must name
# at least that version in min_agent_version, so no agent receives a field it would refuse as unknown.
BASELINE_AGENT_VERSION = "0.1.0"
FIELDS_SINCE: dict[str, str] = {"evaluation": "0.3.0", "variants": "0.4.0"}
# The manifest format that first carries each such field: an agent before it refuses the format by number, saying
# which agent to upgrade to, instead of failing on a key it does not know.
FIELDS_FORMAT: dict[str, int] = {"evaluation": 2, "variants": 3}

NAME_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_RE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def check_semver(value: str) -> str:
    try:
        semver.Version.parse(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a semantic version such as 1.4.0") from None
    return value


def version_key(value: str) -> semver.Version:
    return semver.Version.parse(value)


class TensorSpec(Strict):
    """One graph input or output. Symbolic dimensions (batch) are strings; fixed ones are ints."""

    name: str = Field(min_length=1)
    element_type: ElementType
    shape: list[Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1)]]

    def signature(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.element_type}[{dims}]"


class Metric(Strict):
    """An evaluation result and the data set it came from, so regressions compare like with like."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    value: float = Field(allow_inf_nan=False)
    dataset: str = Field(min_length=1)
    higher_is_better: bool = True


class MeasuredMetric(Strict):
    """A metric `edgefleet model evaluate` computed by running the model on its evaluation's data set."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    value: float = Field(allow_inf_nan=False)
    higher_is_better: bool = True


class Evaluation(Strict):
    """What was measured, on which pinned data set, from which output, with what: the manifest's measured metrics.

    `dataset` names the evaluation set (models/datasets/<dataset>.yaml in the repository) and `dataset_sha256` pins
    the exact file the model ran on, so a reviewer can re-run the measurement and get the same numbers.
    """

    dataset: Name
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    samples: int = Field(gt=0)
    output: str = Field(min_length=1)
    metrics: list[MeasuredMetric] = Field(min_length=1)
    measured_with: str = Field(min_length=1)

    @property
    def label(self) -> str:
        """How plans and messages name the data set: its name and the start of its digest."""
        return f"{self.dataset} (sha256 {self.dataset_sha256[:12]})"


def _check_providers(value: list[str]) -> list[str]:
    for ep in value:
        if ep not in KNOWN_PROVIDERS:
            raise ValueError(f"unknown onnxruntime execution provider {ep!r}; known: {', '.join(KNOWN_PROVIDERS)}")
    return value


# The reference (top-level `file`) is the fp32 build; variants are other builds of it. A new kind is a format bump.
REFERENCE_KIND = "fp32"
VariantKind = Literal["int8", "fp16"]
VARIANT_KINDS: tuple[str, ...] = ("int8", "fp16")


class Requirements(Strict):
    """What a device needs to run a variant; an agent never installs one whose requirements its device fails."""

    arch: list[Arch] = Field(min_length=1)
    min_memory_mb: int = Field(gt=0)
    providers: list[str] = Field(min_length=1)  # the device must offer every one of these

    _v_providers = field_validator("providers")(_check_providers)


class Comparison(Strict):
    """The variant against the reference on the version's evaluation set, both run in the same measurement.

    `top1_agreement` is the share of frames where both pick the same class; `max_abs_diff` the largest difference
    between their scores on `output`; `delta` is `value - reference` of `metric` (negative: the variant is worse when
    higher is better). `measured_with` says with what, so a reviewer can re-run it and get the same numbers.
    """

    dataset: Name
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    samples: int = Field(gt=0)
    output: str = Field(min_length=1)
    top1_agreement: float = Field(ge=0.0, le=1.0)
    max_abs_diff: float = Field(ge=0.0, allow_inf_nan=False)
    metric: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    reference: float = Field(allow_inf_nan=False)
    value: float = Field(allow_inf_nan=False)
    delta: float = Field(allow_inf_nan=False)
    higher_is_better: bool = True
    measured_with: str = Field(min_length=1)

    @property
    def drop(self) -> float:
        """How much worse than the reference the variant measured (0 or less: no worse)."""
        return -self.delta if self.higher_is_better else self.delta


class Variant(Strict):
    """Another build of the version's reference, pinned by digest and size exactly as the reference is."""

    kind: VariantKind
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    execution_providers: list[str] = Field(min_length=1)  # the order the session tries them in
    requires: Requirements
    built_with: str = Field(min_length=1)
    comparison: Comparison

    _v_providers = field_validator("execution_providers")(_check_providers)


class HardwareProfile(Strict):
    """A class of device: what it can execute and how much room a model may take on it."""

    name: Name
    arch: Arch
    execution_providers: list[str] = Field(min_length=1)
    memory_mb: int = Field(gt=0)
    storage_mb: int = Field(gt=0)

    _v_providers = field_validator("execution_providers")(_check_providers)


class ModelManifest(Strict):
    name: Name
    version: str
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    opset: int = Field(ge=7)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    metrics: list[Metric] = Field(default_factory=list)  # declared: typed in, not measured here
    evaluation: Evaluation | None = None  # measured (format 2, agent 0.3.0); unwritten when absent
    variants: list[Variant] = Field(default_factory=list)  # other builds (format 3, agent 0.4.0); unwritten when none
    targets: list[HardwareProfile] = Field(min_length=1)
    min_agent_version: str
    description: str = ""
    format: int = Field(default=1, ge=1, le=MANIFEST_FORMAT)

    _v_version = field_validator("version", "min_agent_version")(check_semver)

    @model_validator(mode="after")
    def _unique_names(self) -> "ModelManifest":
        for label, items in (("inputs", self.inputs), ("outputs", self.outputs), ("metrics", self.metrics), ("targets", self.targets)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{label} has duplicate names: {', '.join(dupes)}")
        if self.evaluation is not None:
            measured = [m.name for m in self.evaluation.metrics]
            dupes = sorted({n for n in measured if measured.count(n) > 1})
            if dupes:
                raise ValueError(f"evaluation.metrics has duplicate names: {', '.join(dupes)}")
            both = sorted(set(measured) & {m.name for m in self.metrics})
            if both:
                raise ValueError(
                    f"{', '.join(both)} is both declared (metrics) and measured (evaluation.metrics): a metric is one or the other; "
                    "remove the declared one"
                )
        kinds = [v.kind for v in self.variants]
        dupes = sorted({k for k in kinds if kinds.count(k) > 1})
        if dupes:
            raise ValueError(f"variants has more than one {', '.join(dupes)}: a version has one build of each kind")
        files = [self.file, *(v.file for v in self.variants)]
        dupes = sorted({f for f in files if files.count(f) > 1})
        if dupes:
            raise ValueError(f"variants: {', '.join(dupes)} is the file of more than one build; each build has its own file")
        return self

    @model_validator(mode="after")
    def _format_names_its_fields(self) -> "ModelManifest":
        need = required_format(dict(self))
        if self.format < need:
            used = ", ".join(f for f, v in FIELDS_FORMAT.items() if v > self.format and _used(dict(self), f))
            raise ValueError(f"{used} needs manifest format {need}, and this manifest is format {self.format}; set format: {need}")
        return self

    @model_validator(mode="after")
    def _readable_by_its_agents(self) -> "ModelManifest":
        need = required_agent_version(dict(self))
        if version_key(self.min_agent_version) < version_key(need):
            used = ", ".join(
                f for f, v in FIELDS_SINCE.items() if version_key(v) > version_key(self.min_agent_version) and _used(dict(self), f)
            )
            raise ValueError(
                f"min_agent_version {self.min_agent_version} is older than {need}, the first agent that reads {used}; "
                f"set min_agent_version: {need}"
            )
        return self

    @property
    def semver(self) -> semver.Version:
        return semver.Version.parse(self.version)

    def metric(self, name: str) -> Metric | None:
        """The declared metric of that name (typed in); measured ones are in `evaluation` (see measured())."""
        return next((m for m in self.metrics if m.name == name), None)

    def measured(self, name: str) -> MeasuredMetric | None:
        return next((m for m in self.evaluation.metrics if m.name == name), None) if self.evaluation else None

    def variant(self, kind: str) -> Variant | None:
        return next((v for v in self.variants if v.kind == kind), None)

    def build(self, kind: str | None) -> tuple[str, str, int]:
        """The file, sha256 and size of the build of that kind (None or "fp32": the reference); KeyError if none."""
        if kind in (None, REFERENCE_KIND):
            return self.file, self.sha256, self.size
        variant = self.variant(kind)
        if variant is None:
            raise KeyError(kind)
        return variant.file, variant.sha256, variant.size

    @property
    def kinds(self) -> list[str]:
        return [REFERENCE_KIND, *(v.kind for v in self.variants)]

    @model_serializer(mode="wrap")
    def _format_1_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        if body.get("format") == 1:
            del body["format"]
        if body.get("evaluation", 0) is None:  # absent: the bytes agents before format 2 read
            del body["evaluation"]
        if body.get("variants", 0) == []:  # none: the bytes agents before format 3 read
            del body["variants"]
        return body

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=120)


def _used(fields: Mapping[str, Any], name: str) -> bool:
    return fields.get(name) not in (None, "", [], {})


def required_agent_version(fields: Mapping[str, Any]) -> str:
    """The oldest agent that reads every field a manifest with these field values uses."""
    return max([BASELINE_AGENT_VERSION, *(v for f, v in FIELDS_SINCE.items() if _used(fields, f))], key=version_key)


def required_format(fields: Mapping[str, Any]) -> int:
    """The oldest manifest format that carries every field a manifest with these field values uses."""
    return max([1, *(v for f, v in FIELDS_FORMAT.items() if _used(fields, f))])


_PARSED: dict[tuple[int, bytes], ModelManifest] = {}  # by the format this agent reads, and the bytes
_PARSED_KEEP = 16


def parse_manifest_bytes(data: bytes, source: str) -> ModelManifest:
    """Parses manifest bytes exactly as the device agent receives them. The result is a pure function of the bytes and
    immutable, so the last few are kept: a simulated fleet installs one manifest on thousands of devices in a process."""
    hit = _PARSED.get((MANIFEST_FORMAT, data))
    if hit is not None:
        return hit
    manifest = _parse_manifest(data, source)
    if len(_PARSED) >= _PARSED_KEEP:
        _PARSED.pop(next(iter(_PARSED)), None)
    _PARSED[(MANIFEST_FORMAT, data)] = manifest
    return manifest


def _parse_manifest(data: bytes, source: str) -> ModelManifest:
    try:
        raw = yamlfile.load(data.decode("utf-8"))
    except yamlfile.DuplicateKeyError as exc:
        raise ConfigError(source, str(exc), f"keep one {exc.key!r}: the manifest must say one thing, and its signature covers it") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(source, "expected a mapping of manifest fields at the top level")
    fmt = raw.get("format", 1)
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > MANIFEST_FORMAT:
        wants = raw.get("min_agent_version")
        raise FormatError(
            source,
            f"manifest format {fmt} is newer than the {MANIFEST_FORMAT} this agent reads",
            f"upgrade the agent{f' to {wants} or newer, as min_agent_version asks' if isinstance(wants, str) else ''}",
        )
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, source) from None


class ModelDir:
    """A model directory: the manifest, its artifact and (optionally) a detached signature."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def signature_path(self) -> Path:
        return self.path / SIGNATURE_FILE

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest_bytes(self) -> bytes:
        if not self.manifest_path.is_file():
            raise EdgefleetError(
                str(self.manifest_path), "no manifest here", f"create it with `edgefleet model add {self.path} --onnx FILE --version X.Y.Z`"
            )
        return self.manifest_path.read_bytes()

    def load(self) -> ModelManifest:
        manifest = parse_manifest_bytes(self.manifest_bytes(), str(self.manifest_path))
        if manifest.name != self.path.name:
            raise ConfigError(
                str(self.manifest_path),
                f"name: {manifest.name!r} does not match its directory {self.path.name!r}",
                f"rename the directory to models/{manifest.name} or set name: {self.path.name}",
            )
        return manifest

    def artifact_path(self, manifest: ModelManifest, kind: str | None = None) -> Path:
        """The reference's file, or with `kind` that build's (KeyError if the manifest has none of that kind)."""
        return self.path / manifest.build(kind)[0]


def is_valid_name(name: str) -> bool:
    return re.match(NAME_RE, name) is not None
