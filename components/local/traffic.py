"""What the applications on the local fleet's devices send their models (`edgefleet:local.traffic`).

Gates judge what devices report of their applications' requests. On the local fleet those applications are
simulated: each device sends the frames of a pinned labelled set (`models/datasets/`), starting at its own place
in it, and a fixed share of the requests carry the true label, as an application that learns it later would
(a cashier confirms, an operator corrects). So the canary's shadow agreement, the wider rings' prediction shift
and the live accuracy are measured on frames from the task, and a model that ignores its input cannot pass them.

Simulated devices call the agent in-process (`DeviceAgent.predict`, the endpoint's request path); agent processes
are called over HTTP through the agent's own client, as an application on the device would. A model with no
declared traffic gets the manifest's seeded random inputs (the agent's synthetic traffic), and `up` says so.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.datasets import FORMAT_DOC, LabelledSet, input_problems, load_set
from components.stack import PROJECT
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError
from edgefleet_agent.contract.manifest import ModelDir, ModelManifest

log = logging.getLogger("edgefleet.local")


@dataclass
class TrafficCounts:
    """What the simulated applications sent one model: requests answered, those that carried a label, and those the
    device refused (nothing verified loaded yet, inputs the served version does not take, a failed run)."""

    sent: int = 0
    labelled: int = 0
    refused: int = 0

    def to_json(self) -> dict[str, int]:
        return {"sent": self.sent, "labelled": self.labelled, "refused": self.refused}


@dataclass
class Traffic:
    """One model's requests: frame `i` of the set, fed as the model's input (a batch of one), with its label on
    `labelled_share` of the requests, spread evenly."""

    model: str
    dataset: LabelledSet
    labelled_share: float
    counts: TrafficCounts = field(default_factory=TrafficCounts)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def frame(self, i: int) -> np.ndarray:
        """Frame `i` as the model receives it, a batch of one, converted per request: the whole set converted once
        would hold four times its bytes beside it (float32: 73.5 MiB for the shipped set's 128 frames, which take 18.4
        as uint8; a tenth of the fleet's memory budget) to save 0.1 ms a request. The same values as feeding the set
        whole (elementwise)."""
        return self.dataset.feed(self.dataset.frames[i : i + 1])

    def request(self, device_id: str, n: int) -> tuple[dict[str, np.ndarray], int | None]:
        """The `n`-th request of `device_id`. Devices start at different places (by their id), in the set and in
        the labelling cycle, so a ring of a few devices sends the whole set and any moment's requests carry the declared
        share of labels; request k of that cycle carries its label when ⌊(k+1)·share⌋ > ⌊k·share⌋."""
        start = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
        i = (int.from_bytes(start[:4], "big") + n) % self.dataset.samples
        # the labelling cycle starts elsewhere for each device, so every frame is labelled by some devices (one cycle for
        # both would label the same quarter of the set everywhere) and a fleet whose devices each send a request or
        # two still samples the set evenly (CRC32, linear, put sequential ids' starts on a few residues)
        k = int.from_bytes(start[4:], "big") + n  # below 2**32 + n: exact in the float products below
        share = self.labelled_share
        label = int(self.dataset.labels[i]) if math.floor((k + 1) * share) > math.floor(k * share) else None
        return {self.dataset.input: self.frame(i)}, label

    def count(self, label: int | None, refused: bool) -> None:
        with self._lock:
            if refused:
                self.counts.refused += 1
            else:
                self.counts.sent += 1
                self.counts.labelled += label is not None


def _manifest_of(cfg: Any, project_dir: Path, model: str) -> tuple[ModelManifest, str] | None:
    for ref in cfg.models:
        mdir = ModelDir(project_dir / ref.path)
        try:
            manifest = mdir.load()
        except EdgefleetError:
            continue  # the stack's load names a broken model directory itself
        if manifest.name == model:
            return manifest, str(mdir.manifest_path.relative_to(project_dir))
    return None


def load_traffic(cfg: Any, project_dir: Path, models: list[str], source: str) -> dict[str, Traffic]:
    """Each declared model's traffic, its set read against its pin and checked against the model's input. Refuses,
    before any device starts, traffic for a model the fleet does not run and a set that cannot feed the model."""
    declared = dict(cfg.local.traffic) if cfg.local is not None else {}
    out: dict[str, Traffic] = {}
    for model, spec in declared.items():
        key = f"{PROJECT}:local.traffic.{model}"
        if model not in models:
            raise ConfigError(
                source,
                f"{key}: the local fleet runs no model {model!r} (its local rollouts ship: {', '.join(models) or 'none'})",
                "name a model a local rollout ships, or remove the entry",
            )
        path = project_dir / spec.dataset
        try:
            dataset = load_set(path)
        except EdgefleetError as exc:
            raise ConfigError(
                source,
                f"{key}.dataset: {spec.dataset} cannot be read: {exc.where}: {exc.problem}",
                exc.fix or f"see {FORMAT_DOC}",
            ) from None
        found = _manifest_of(cfg, project_dir, model)
        if found is not None:
            manifest, where = found
            _, problems = input_problems(manifest, dataset)
            if problems:
                raise ConfigError(
                    source,
                    f"{key}.dataset: {spec.dataset} cannot feed {model} {manifest.version} ({where}): " + "; ".join(problems),
                    "point it at a set made for this model's input, or remove the entry (devices then send random inputs)",
                )
        out[model] = Traffic(model, dataset, spec.labelled_share)
    return out


def describe(model: str, traffic: Traffic | None) -> str:
    """One line for `up` and `fleet run`: what the model's applications send, and so what its gates can judge."""
    if traffic is None:
        return (
            f"{model}: no {PROJECT}:local.traffic declared, so devices send the manifest's seeded random inputs and quality "
            "gates judge noise"
        )
    t, c = traffic, traffic.counts
    head = f"{model}: applications send {t.dataset.name} ({t.dataset.samples} frames, {t.labelled_share:.0%} with their label)"
    return head if not (c.sent or c.refused) else f"{head}: {c.sent:,} answered ({c.labelled:,} labelled), {c.refused:,} refused"
