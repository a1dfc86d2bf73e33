"""Issue 26: ``load_explanation`` on hostile files.

Every malformed file (truncated, empty, tampered metadata, wrong shapes, pickles, a zip
bomb) raises ``ExplanationFileError`` naming the file and what is wrong, and the file is
closed in every case. Arrays are checked from their ``.npy`` headers before they are read,
so a small file cannot expand into a huge heatmap.
"""

from __future__ import annotations

import gc
import io
import json
import os
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from timmlens import load_explanation
from timmlens.errors import ExplanationFileError
from timmlens.saving import MAX_BYTES, save_explanation

GEOMETRY = {"original_size": [20, 30], "resized_size": [32, 48], "crop_box": [0, 8, 32, 32]}


@pytest.fixture
def saved(tmp_path) -> Path:
    """A real saved explanation: one heatmap, probabilities, the photo, full metadata."""
    rng = np.random.default_rng(0)
    return save_explanation(
        tmp_path / "real.npz",
        {"gradcam": rng.random((32, 32), dtype=np.float32)},
        {
            "kind": "quick_explain",
            "model": {"name": "test_resnet", "weights": {"note": "random weights"}},
            "method": "gradcam",
            "layer": "layer4",
            "target_class": 3,
            "geometry": GEOMETRY,
        },
        probabilities=np.full(10, 0.1),
        image=np.zeros((20, 30, 3), np.uint8),
    )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _refused(path: Path, match: str, **options) -> str:
    """Load ``path``; it must raise ExplanationFileError naming the file, leaving no file open."""
    gc.collect()
    before = _open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExplanationFileError, match=match) as error:
            load_explanation(path, **options)
        # The traceback still holds the loader's frames: a leaked handle would be open now.
        assert _open_fds() == before
        message = str(error.value)
        del error
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert str(path) in message
    return message


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _with_metadata(saved: Path, text: bytes | str) -> Path:
    members = _members(saved)
    data = text.encode("utf-8") if isinstance(text, str) else text
    members["metadata_json.npy"] = _npy(np.frombuffer(data, dtype=np.uint8))
    return _write(saved.with_name("tampered.npz"), members)


def _read_doc(saved: Path) -> dict:
    with np.load(saved, allow_pickle=False) as archive:
        return json.loads(archive["metadata_json"].tobytes())


def test_a_real_file_loads_and_leaves_nothing_open(saved):
    before = _open_fds()
    loaded = load_explanation(saved)
    assert _open_fds() == before
    assert loaded.heatmap.shape == (32, 32) and loaded.image.shape == (20, 30, 3)
    assert loaded.geometry.crop_box == (0, 8, 32, 32) and loaded.method == "gradcam"


@pytest.mark.parametrize("keep", [0.5, 0.9, -1, -22, 30])
def test_a_truncated_file_is_refused_and_closed(saved, keep):
    data = saved.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    saved.write_bytes(data[:cut])
    message = _refused(saved, "damaged|not a saved explanation")
    assert "result.save" in message


def test_an_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert "empty" in _refused(empty, "empty")


def test_random_bytes_and_a_folder_are_refused(tmp_path):
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(noise, "not a zip archive")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    _refused(folder, "is a folder")


def test_a_flipped_byte_inside_an_array_is_caught(saved):
    members = _members(saved)
    heatmap = members["heatmap_0.npy"]
    with zipfile.ZipFile(saved, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    raw = bytearray(saved.read_bytes())
    at = raw.index(heatmap) + len(heatmap) - 5  # inside the data, past the .npy header
    raw[at] ^= 0xFF
    saved.write_bytes(bytes(raw))
    _refused(saved, "damaged")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"\xff\xfe\x00not utf-8", "not UTF-8"),
        ("{'format': 'timmlens.explanation'", "not JSON"),
        ("[1, 2, 3]", "a JSON list, expected a JSON object"),
        ('"timmlens.explanation"', "a JSON string, expected a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ],
)
def test_metadata_that_is_not_a_json_object_is_refused(saved, text, match):
    _refused(_with_metadata(saved, text), match)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": None}, "holds None, not timmlens.explanation"),
        ({"format_version": "one"}, "format_version"),
        ({"format_version": [1]}, "format_version"),
        ({"format_version": 99}, "upgrade timmlens"),
        ({"heatmaps": None}, "'heatmaps'"),
        ({"heatmaps": "gradcam"}, "'heatmaps'"),
        ({"heatmaps": [1]}, "'heatmaps'"),
        ({"heatmaps": []}, "'heatmaps'"),
        ({"heatmaps": ["gradcam", "gradcam"]}, "'heatmaps'"),
        ({"heatmaps": ["gradcam", "extra"]}, "heatmap_1"),
        ({"model": "test_resnet"}, "'model'"),
        ({"model": {"name": 3}}, "'model'"),
        ({"model": {"name": "x", "weights": "random"}}, "'model'"),
        ({"method": ["gradcam"]}, "'method'"),
        ({"geometry": {"original_size": [1, 2]}}, "'geometry'"),
        ({"geometry": {**GEOMETRY, "crop_box": [0, 0, "a", 1]}}, "'geometry'"),
        ({"geometry": [GEOMETRY, 3]}, "'geometry'"),
        ({"geometry": "centre crop"}, "'geometry'"),
    ],
)
def test_tampered_metadata_fields_are_refused(saved, change, match):
    document = _read_doc(saved) | change
    _refused(_with_metadata(saved, json.dumps(document)), match)


def test_missing_keys_are_refused(saved):
    for key in ("format", "heatmaps"):
        document = _read_doc(saved)
        del document[key]
        _refused(_with_metadata(saved, json.dumps(document)), f"'{key}'")
    members = _members(saved)
    del members["metadata_json.npy"]
    _refused(_write(saved.with_name("bare.npz"), members), "without timmlens metadata")


@pytest.mark.parametrize(
    ("member", "array", "match"),
    [
        ("heatmap_0", np.zeros(5, np.float32), r"heatmap_0.*\(H, W\) or \(B, H, W\)"),
        ("heatmap_0", np.zeros((1, 1, 4, 4), np.float32), r"\(H, W\) or \(B, H, W\)"),
        ("heatmap_0", np.zeros((4, 4), np.int64), "float32"),
        ("heatmap_0", np.zeros((4, 4), ">f4"), "float32"),
        ("image", np.zeros((20, 30), np.uint8), r"\(H0, W0, 3\)"),
        ("image", np.zeros((20, 30, 3), np.float32), "uint8"),
        ("probabilities", np.zeros((1, 2, 3), np.float32), r"\(K,\) or \(B, K\)"),
        ("metadata_json", np.zeros((2, 2), np.uint8), "metadata_json"),
    ],
)
def test_arrays_of_the_wrong_shape_or_type_are_refused(saved, member, array, match):
    members = _members(saved)
    members[f"{member}.npy"] = _npy(array)
    _refused(_write(saved, members), match)


def test_a_pickle_is_refused_without_being_run(saved, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    members = _members(saved)
    members["heatmap_0.npy"] = _npy(np.array([Payload()], dtype=object))
    _refused(_write(saved, members), "pickle")
    assert not marker.exists()


def test_a_member_that_is_not_an_npy_array_is_refused(saved):
    members = _members(saved)
    members["heatmap_0.npy"] = b"PK not an array at all"
    _refused(_write(saved, members), "heatmap_0.*not an .npy array")


def _bomb(path: Path, shape: tuple[int, ...], real_bytes: int) -> Path:
    """A valid-looking explanation whose heatmap declares ``shape``; ``real_bytes`` zeros are
    actually compressed into it (a true zip bomb when they match the declared size)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    document = {"format": "timmlens.explanation", "format_version": 1, "heatmaps": ["x"]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "metadata_json.npy", _npy(np.frombuffer(json.dumps(document).encode(), np.uint8))
        )
        with archive.open("heatmap_0.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 22)
            for start in range(0, real_bytes, len(chunk)):
                member.write(chunk[: real_bytes - start])
    return path


def test_a_zip_bomb_is_refused_before_it_is_read(tmp_path):
    shape = (10_000, 10_000)  # 400 MB of float32 from a file of a few hundred kB
    bomb = _bomb(tmp_path / "bomb.npz", shape, 4 * 10_000 * 10_000)
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        message = _refused(bomb, "declare")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    assert "(10000, 10000)" in message and "max_bytes" in message


def test_a_declared_shape_larger_than_the_data_is_refused(tmp_path):
    _refused(_bomb(tmp_path / "huge.npz", (2**40, 2**20), 0), "declare")
    # Under the limit but longer than the data written: a damaged file, not a hang.
    _refused(_bomb(tmp_path / "short.npz", (1000, 1000), 400), "damaged")


def test_the_limit_is_documented_and_can_be_raised_for_trusted_files(saved):
    assert MAX_BYTES == 256 * 2**20
    assert "max_bytes" in load_explanation.__doc__
    _refused(saved, "max_bytes", max_bytes=1000)
    assert load_explanation(saved, max_bytes=10**6).heatmap.shape == (32, 32)
