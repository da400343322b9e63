"""Which build of a model version a device runs: a pure choice from the signed manifest and what the device reports.

The order, best first (docs/models.md#variants):
  1. a variant whose preferred execution provider is an accelerator this device offers (built for this hardware),
     the one that measured closest to the reference first;
  2. the reference (fp32), when it fits: nothing measured worse than the reference is chosen over it;
  3. any other variant that fits, closest to the reference first, then the smallest.
A build is never chosen when the device fails one of its requirements (arch, memory, every required provider).
The reference's requirements come from the manifest's targets: their arches, the smallest memory among them, CPU.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import REFERENCE_KIND, ModelManifest, Requirements

CPU = "CPUExecutionProvider"
MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "armv7", "armv7": "armv7"}


class NoVariantFits(EdgefleetError):
    """The device meets the requirements of no build (or not of the one asked for)."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the agent reports about its device: the inputs of the choice."""

    device_id: str
    arch: str
    providers: tuple[str, ...]  # onnxruntime's available execution providers on this device
    memory_mb: int  # memory a model may use


@dataclass(frozen=True)
class Build:
    """One build of the version a device can be given: the reference or a variant, with what it needs."""

    kind: str
    file: str
    sha256: str
    size: int
    execution_providers: tuple[str, ...]
    requires: Requirements
    drop: float  # measured drop against the reference (0 for the reference)


def reference_requirements(manifest: ModelManifest) -> Requirements:
    arches = sorted({t.arch for t in manifest.targets})
    return Requirements(arch=arches, min_memory_mb=min(t.memory_mb for t in manifest.targets), providers=[CPU])


def builds(manifest: ModelManifest) -> list[Build]:
    """The reference first, then the variants in manifest order."""
    ref_eps: list[str] = []
    for target in manifest.targets:
        ref_eps += [ep for ep in target.execution_providers if ep not in ref_eps]
    out = [
        Build(REFERENCE_KIND, manifest.file, manifest.sha256, manifest.size, tuple(ref_eps or [CPU]), reference_requirements(manifest), 0.0)
    ]
    for v in manifest.variants:
        out.append(Build(v.kind, v.file, v.sha256, v.size, tuple(v.execution_providers), v.requires, max(0.0, v.comparison.drop)))
    return out


def unmet(requires: Requirements, device: DeviceFacts) -> list[str]:
    """Each requirement the device fails, as a phrase (empty: it fits)."""
    problems = []
    if device.arch not in requires.arch:
        problems.append(f"arch {device.arch} is not one of {', '.join(requires.arch)}")
    if device.memory_mb < requires.min_memory_mb:
        problems.append(f"{device.memory_mb} MB memory is below the {requires.min_memory_mb} MB it needs")
    missing = [p for p in requires.providers if p not in device.providers]
    if missing:
        problems.append(f"no {', '.join(missing)} (device has {', '.join(device.providers) or 'none'})")
    return problems


def _accelerated(build: Build, device: DeviceFacts) -> bool:
    first = build.execution_providers[0]
    return build.kind != REFERENCE_KIND and first != CPU and first in device.providers


def _rank(build: Build, device: DeviceFacts) -> tuple[int, float, int]:
    tier = 0 if _accelerated(build, device) else 1 if build.kind == REFERENCE_KIND else 2
    return (tier, build.drop, build.size)


def choose(manifest: ModelManifest, device: DeviceFacts, kind: str | None = None) -> Build:
    """The best build this device can run, or with `kind` that build if the device can run it; NoVariantFits otherwise."""
    label = f"{manifest.name} {manifest.version}"
    candidates = builds(manifest)
    if kind is not None:
        picked = next((b for b in candidates if b.kind == kind), None)
        if picked is None:
            raise NoVariantFits(
                f"device {device.device_id}",
                f"{label} has no {kind} build (it has {', '.join(manifest.kinds)})",
                f"pick one of {', '.join(manifest.kinds)}, or add it with `edgefleet model variant add models/{manifest.name} --kind {kind}`",
            )
        problems = unmet(picked.requires, device)
        if problems:
            raise NoVariantFits(
                f"device {device.device_id}",
                f"cannot run the {kind} build of {label}: {'; '.join(problems)}",
                "pick another --variant, or leave it out to get the best fit for this device",
            )
        return picked
    fitting = [b for b in candidates if not unmet(b.requires, device)]
    if not fitting:
        why = "; ".join(f"{b.kind}: {', '.join(unmet(b.requires, device))}" for b in candidates)
        raise NoVariantFits(
            f"device {device.device_id} ({device.arch}, {device.memory_mb} MB, {', '.join(device.providers) or 'no providers'})",
            f"fits no build of {label}: {why}",
            "add a build this device can run (`edgefleet model variant add models/"
            f"{manifest.name} --kind int8` for a small CPU device), add a target for its hardware, or move it to a group whose "
            "hardware profile the model supports",
        )
    return min(fitting, key=lambda b: _rank(b, device))


def memory_mb() -> int:
    """This machine's available memory (Linux: MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return 0


def this_device(device_id: str, providers: list[str] | tuple[str, ...]) -> DeviceFacts:
    """What this machine reports: its arch, the execution providers onnxruntime offers here, its available memory."""
    machine = platform.machine().lower()
    return DeviceFacts(device_id, MACHINE_ARCH.get(machine, machine), tuple(providers), memory_mb())
