"""Delta updates: a patch rebuilds exactly the new artifact or nothing, and every refusal says why.

The publisher's make_patch (components/delta.py) and the device's apply_patch (edgefleet_agent/delta.py) together;
small FastCDC chunks (avg_chunk=256) so that short byte strings exercise copies as well as literals.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import random
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.delta import DICT_SIZE, make_patch
from edgefleet_agent.delta import HEADER, METHOD, OP, PatchError, PatchHeader, apply_patch, read_header

SMALL = 256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def patched(folder: Path, old: bytes, new: bytes, avg_chunk: int = SMALL) -> tuple[Path, Path]:
    """(old file, patch file) for old -> new."""
    old_path = write(folder, "old.onnx", old)
    new_path = write(folder, "new.onnx", new)
    patch = folder / "new.patch"
    make_patch(old_path, new_path, patch, avg_chunk=avg_chunk)
    return old_path, patch


def apply_to(folder: Path, old_path: Path, patch: Path, new: bytes, **kwargs: object) -> Path:
    out = folder / "rebuilt.onnx"
    apply_patch(old_path, patch, out, sha(new), len(new), **kwargs)  # type: ignore[arg-type]
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# an old file and a successor sharing most of it: splices, insertions and deletions at random places
@st.composite
def related(draw: st.DrawFn) -> tuple[bytes, bytes]:
    old = draw(st.binary(max_size=6000))
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(new)))
        cut = draw(st.integers(0, min(400, len(new) - at)))
        new[at : at + cut] = draw(st.binary(max_size=400))
    return old, bytes(new)


pairs = st.one_of(st.tuples(st.binary(max_size=3000), st.binary(max_size=3000)), related())
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(pairs)
def test_applying_a_patch_rebuilds_the_new_file(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        old_path, patch = patched(folder, old, new)
        assert apply_to(folder, old_path, patch, new).read_bytes() == new
        assert leftovers(folder) == []


@fast
@given(related(), st.data())
def test_a_flipped_byte_in_the_patch_never_yields_an_unverified_file(pair: tuple[bytes, bytes], data: st.DataObject) -> None:
    old, new = pair
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        old_path, patch = patched(folder, old, new)
        body = bytearray(patch.read_bytes())
        at = data.draw(st.integers(0, len(body) - 1), label="byte")
        body[at] ^= data.draw(st.integers(1, 255), label="mask")
        patch.write_bytes(bytes(body))
        out = folder / "rebuilt.onnx"
        try:
            apply_patch(old_path, patch, out, sha(new), len(new))
        except PatchError:
            assert not out.exists()
        else:
            # a flip that still rebuilds the pinned bytes (e.g. a copy moved onto identical content) is harmless
            assert out.read_bytes() == new
        assert leftovers(folder) == []


def test_patch_info_describes_the_patch(tmp_path: Path) -> None:
    old, new = os.urandom(50_000), os.urandom(50_000)
    old_path, new_path = write(tmp_path, "a", old), write(tmp_path, "b", new)
    info = make_patch(old_path, new_path, tmp_path / "p")
    body = (tmp_path / "p").read_bytes()
    assert (info.size, info.sha256, info.from_sha256, info.to_sha256, info.method) == (len(body), sha(body), sha(old), sha(new), METHOD)


def test_a_retrained_last_layer_ships_about_its_own_bytes(tmp_path: Path) -> None:
    """Most of the model is copied from the device's file; only the changed tensor (random floats) travels."""
    rng = random.Random(13)
    old = rng.randbytes(4 << 20)
    new = old[: -(512 << 10)] + rng.randbytes(512 << 10)
    old_path, patch = patched(tmp_path, old, new, avg_chunk=16 << 10)
    assert patch.stat().st_size < 0.16 * len(new)
    assert apply_to(tmp_path, old_path, patch, new).read_bytes() == new


def test_identical_and_empty_files(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    old_path, patch = patched(tmp_path, data, data)
    assert read_header(patch).ops == 1 and read_header(patch).literal_size == 0
    assert patch.stat().st_size < 200
    assert apply_to(tmp_path, old_path, patch, data).read_bytes() == data
    old_path, patch = patched(tmp_path, b"", b"")
    assert apply_to(tmp_path, old_path, patch, b"").read_bytes() == b""


# --- attacks and refusals: each leaves the output untouched, names the reason, and says to fall back -----------------


@pytest.fixture
def versions(tmp_path: Path) -> tuple[bytes, bytes]:
    old = os.urandom(200_000)
    return old, old[:150_000] + os.urandom(50_000)


def refused(tmp_path: Path, old_path: Path, patch: Path, new: bytes, reason: str, **kwargs: object) -> PatchError:
    out = write(tmp_path, "rebuilt.onnx", b"the file the device had")
    with pytest.raises(PatchError) as caught:
        apply_patch(old_path, patch, out, sha(new), len(new), **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    assert "download the full artifact" in (caught.value.fix or "")
    assert out.read_bytes() == b"the file the device had"
    assert leftovers(tmp_path) == []
    return caught.value


def test_a_patch_built_from_another_base_is_refused(tmp_path: Path, versions: tuple[bytes, bytes]) -> None:
    """Attack: the store (or a mix-up) hands a device a patch made for devices on another version. Applied blindly,
    copies from the wrong base would produce garbage; the patch names its base's digest and the device checks it."""
    old, new = versions
    other_base = os.urandom(len(old))
    _, patch = patched(tmp_path, other_base, new)
    error = refused(tmp_path, write(tmp_path, "mine.onnx", old), patch, new, "base")
    assert sha(other_base) in error.problem and sha(old) in error.problem


def test_a_patch_for_another_target_is_refused_before_any_work(tmp_path: Path, versions: tuple[bytes, bytes]) -> None:
    """Attack: a genuine patch to some other artifact (an older build, a different model) served for this version."""
    old, new = versions
    old_path, patch = patched(tmp_path, old, old[:100] + b"an artifact nobody signed" + old[100:])
    error = refused(tmp_path, old_path, patch, new, "target")
    assert sha(new) in error.problem


def test_a_patch_that_rebuilds_to_another_digest_is_refused(tmp_path: Path, versions: tuple[bytes, bytes]) -> None:
    """Attack: the header is rewritten to claim the signed digest while the body rebuilds the attacker's bytes.
    Nothing checks the header's claim but the digest of what was rebuilt, and that refuses it."""
    old, new = versions
    evil = new[:-10] + b"0123456789"
    old_path, patch = patched(tmp_path, old, evil)
    body = patch.read_bytes()
    header = PatchHeader.unpack(body, "patch")
    forged = PatchHeader(header.from_size, header.to_size, header.from_sha256, sha(new), header.ops, header.literal_size, header.dict_size)
    patch.write_bytes(forged.pack() + body[HEADER.size :])
    error = refused(tmp_path, old_path, patch, new, "digest")
    assert sha(evil) in error.problem and sha(new) in error.problem


def test_a_patch_needing_more_memory_than_the_device_declares_is_refused(tmp_path: Path, versions: tuple[bytes, bytes]) -> None:
    old, new = versions
    old_path, patch = patched(tmp_path, old, new)
    needed = read_header(patch).memory_needed
    error = refused(tmp_path, old_path, patch, new, "memory", max_memory_bytes=needed - 1)
    assert str(needed) in error.problem
    assert apply_to(tmp_path, old_path, patch, new, max_memory_bytes=needed).read_bytes() == new


def test_a_header_understating_its_dictionary_is_held_to_the_memory_bound(tmp_path: Path, versions: tuple[bytes, bytes]) -> None:
    """Attack: the header declares a 1 MiB dictionary but the literal stream asks the decoder for 64 MiB."""
    old, new = versions
    old_path, patch = patched(tmp_path, old, new)
    body = patch.read_bytes()
    header = PatchHeader.unpack(body, "patch")
    literals_at = HEADER.size + header.ops * OP.size
    literals = lzma.decompress(body[literals_at:])
    greedy = lzma.compress(literals, format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 64 << 20}])
    patch.write_bytes(body[:literals_at] + greedy)
    refused(tmp_path, old_path, patch, new, "memory", max_memory_bytes=header.memory_needed)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:-1], "corrupt"),  # truncated in transit
        (lambda b: b + b"\0", "corrupt"),  # trailing bytes
        (lambda b: b[: HEADER.size + 3], "corrupt"),  # cut inside the table of operations
        (lambda b: b"NOTAPATCH" + b[9:], "format"),
        (lambda b: b"", "format"),
    ],
    ids=["truncated", "trailing", "cut-table", "magic", "empty"],
)
def test_a_damaged_patch_is_refused(tmp_path: Path, versions: tuple[bytes, bytes], damage, reason: str) -> None:
    old, new = versions
    old_path, patch = patched(tmp_path, old, new)
    patch.write_bytes(damage(patch.read_bytes()))
    refused(tmp_path, old_path, patch, new, reason)


def test_memory_does_not_grow_with_the_model(tmp_path: Path) -> None:
    """Applying streams: a patch whose 8 MiB are all literals stays within the memory its header declares."""
    new = os.urandom(8 << 20)
    old_path, patch = patched(tmp_path, os.urandom(1 << 20), new, avg_chunk=16 << 10)
    needed = read_header(patch).memory_needed
    assert needed < 2 << 20
    tracemalloc.start()
    try:
        apply_to(tmp_path, old_path, patch, new, max_memory_bytes=needed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert DICT_SIZE < peak <= needed, f"peak {peak} bytes traced, header declares {needed}"
