"""Tests for the HAM10000 and DermaMNIST readers, the cache and load_dataset."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import helpers.datasets as datasets
from helpers.datasets import (
    CLASSES,
    SkinLesionData,
    download_dermamnist,
    images_to_tensor,
    load_dataset,
    read_dermamnist,
    read_ham10000,
)

# Six images of four lesions at two sites, each image one solid colour so that
# its resized pixels are known.
ROWS = [
    ("HAM_0000001", "ISIC_0000001", "nv", "follow_up", "45.0", "male", "back", "siteA"),
    ("HAM_0000001", "ISIC_0000002", "nv", "follow_up", "45.0", "male", "back", "siteA"),
    ("HAM_0000002", "ISIC_0000003", "mel", "histo", "70.0", "female", "face", "siteB"),
    ("HAM_0000003", "ISIC_0000004", "bcc", "histo", "", "unknown", "scalp", "siteB"),
    (
        "HAM_0000004",
        "ISIC_0000005",
        "vasc",
        "consensus",
        "30.0",
        "male",
        "trunk",
        "siteA",
    ),
    (
        "HAM_0000004",
        "ISIC_0000006",
        "vasc",
        "consensus",
        "30.0",
        "male",
        "trunk",
        "siteA",
    ),
]
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
COLOURS = {
    "ISIC_0000001": (200, 40, 40),
    "ISIC_0000002": (40, 200, 40),
    "ISIC_0000003": (40, 40, 200),
    "ISIC_0000004": (200, 200, 40),
    "ISIC_0000005": (40, 200, 200),
    "ISIC_0000006": (200, 40, 200),
}


def write_metadata(
    root: Path,
    *,
    name: str = "HAM10000_metadata.csv",
    separator: str = ",",
    with_dataset: bool = True,
    quote: bool = False,
    rows=ROWS,
) -> Path:
    columns = COLUMNS + (["dataset"] if with_dataset else [])

    def cell(value: str) -> str:
        return f'"{value}"' if quote else value

    lines = [separator.join(cell(column) for column in columns)]
    for row in rows:
        lines.append(separator.join(cell(value) for value in row[: len(columns)]))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_image(path: Path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


def write_images(root: Path, folders: tuple[str, ...]) -> None:
    """Spread the six images over `folders` (relative to root) in turn."""
    for index, (image_id, colour) in enumerate(COLOURS.items()):
        folder = root / folders[index % len(folders)]
        write_image(folder / f"{image_id}.jpg", colour)


def make_ham(root: Path, folders=("HAM10000_images_part_1", "HAM10000_images_part_2")):
    root.mkdir(parents=True, exist_ok=True)
    write_metadata(root)
    write_images(root, folders)
    return root


@pytest.fixture
def ham_root(tmp_path: Path) -> Path:
    return make_ham(tmp_path / "ham")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def expected_colours() -> np.ndarray:
    return np.array([COLOURS[row[1]] for row in ROWS], dtype=float)


def assert_solid_colours(data: SkinLesionData) -> None:
    mean = data.images.reshape(len(data), -1, 3).mean(axis=1)
    np.testing.assert_allclose(mean, expected_colours(), atol=4)


# read_ham10000: layouts.


def test_read_ham10000_default_layout(ham_root, cache_dir):
    data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(data) == 6
    assert data.images.shape == (6, 8, 8, 3)
    assert data.images.dtype == np.uint8
    assert data.name == "HAM10000"
    assert data.has_lesion_ids
    assert data.official_split is None
    assert data.labels.tolist() == [CLASSES.index(row[2]) for row in ROWS]
    assert data.image_ids.tolist() == [row[1] for row in ROWS]
    assert data.lesion_ids.tolist() == [row[0] for row in ROWS]
    assert data.sites.tolist() == [row[7] for row in ROWS]
    assert_solid_colours(data)


def test_read_ham10000_metadata_columns(ham_root, cache_dir):
    metadata = read_ham10000(ham_root, side=8, cache_dir=cache_dir).metadata

    assert list(metadata.columns) == COLUMNS + ["dataset"]
    assert metadata["age"].tolist()[:3] == [45.0, 45.0, 70.0]
    assert np.isnan(metadata["age"][3])


@pytest.mark.parametrize(
    ("name", "separator", "quote"),
    [
        ("HAM10000_metadata.csv", ",", False),
        ("HAM10000_metadata.tab", "\t", True),
        ("HAM10000_metadata.tab", "\t", False),
        ("HAM10000_metadata", "\t", True),
        ("HAM10000_metadata", ",", False),
    ],
)
def test_read_ham10000_metadata_formats(tmp_path, cache_dir, name, separator, quote):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, name=name, separator=separator, quote=quote)
    write_images(root, ("HAM10000_images_part_1",))

    data = read_ham10000(root, side=8, cache_dir=cache_dir)

    assert data.image_ids.tolist() == [row[1] for row in ROWS]
    assert data.sites.tolist() == [row[7] for row in ROWS]
    assert_solid_colours(data)


def test_read_ham10000_without_dataset_column(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, with_dataset=False)
    write_images(root, ("HAM10000_images_part_1",))

    data = read_ham10000(root, side=8, cache_dir=cache_dir)

    assert data.sites is None
    assert "dataset" not in data.metadata.columns
    assert data.labels.tolist() == [CLASSES.index(row[2]) for row in ROWS]


@pytest.mark.parametrize(
    "folders",
    [
        ("HAM10000_images_part_1", "HAM10000_images_part_2"),
        ("HAM10000_images_part1", "HAM10000_images_part2"),
        ("HAM10000_images",),
        ("",),
        ("nested/deeper",),
    ],
    ids=["part_1_2", "part1_2", "one_folder", "root", "nested"],
)
def test_read_ham10000_image_layouts(tmp_path, cache_dir, folders):
    root = make_ham(tmp_path / "ham", folders)

    data = read_ham10000(root, side=8, cache_dir=cache_dir)

    assert data.image_ids.tolist() == [row[1] for row in ROWS]
    assert_solid_colours(data)


def test_read_ham10000_identical_duplicates_counted_once(ham_root, cache_dir):
    for part in ("part_1", "part_2"):
        shutil.copytree(
            ham_root / f"HAM10000_images_{part}", ham_root / f"ham10000_images_{part}"
        )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(data) == 6
    assert_solid_colours(data)


def test_read_ham10000_differing_duplicates_warn(ham_root, cache_dir):
    # Same image id, different pixels, in a folder that sorts after the original.
    write_image(ham_root / "zz_copy" / "ISIC_0000001.jpg", (0, 0, 0))

    with pytest.warns(UserWarning, match="1 image.*bytes differ.*ISIC_0000001"):
        data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(data) == 6
    assert_solid_colours(data)  # the first path in sorted order was read


def test_read_ham10000_ignores_unlisted_files(ham_root, cache_dir):
    write_image(ham_root / "HAM10000_images_part_1" / "ISIC_9999999.jpg", (0, 0, 0))
    (ham_root / "HAM10000_images_part_1" / "notes.txt").write_text("not an image")

    data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(data) == 6


def test_read_ham10000_centre_crops_then_resizes(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=ROWS[:1])
    # 60 x 20: green 20-pixel margins left and right of a red centre square.
    image = Image.new("RGB", (60, 20), (0, 255, 0))
    image.paste((255, 0, 0), (20, 0, 40, 20))
    image.save(root / "ISIC_0000001.png")

    data = read_ham10000(root, side=10, cache_dir=cache_dir)

    centre = data.images[0, 2:8, 2:8].reshape(-1, 3).astype(int)
    assert np.all(centre[:, 0] > 240)
    assert np.all(centre[:, 1] < 15)


def test_read_ham10000_converts_grey_and_alpha_images(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=ROWS[:2])
    Image.new("L", (30, 30), 128).save(root / "ISIC_0000001.png")
    Image.new("RGBA", (30, 30), (10, 20, 30, 255)).save(root / "ISIC_0000002.png")

    data = read_ham10000(root, side=8, cache_dir=cache_dir)

    assert data.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(data.images[0, 4, 4], [128, 128, 128])
    np.testing.assert_array_equal(data.images[1, 4, 4], [10, 20, 30])


# read_ham10000: cache.


def test_read_ham10000_second_call_reads_cache(ham_root, cache_dir, monkeypatch):
    first = read_ham10000(ham_root, side=8, cache_dir=cache_dir)
    cache_files = list(cache_dir.glob("*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although a cache file exists")

    monkeypatch.setattr(datasets, "_decode_image", fail)
    second = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(cache_files) == 1
    assert cache_files[0].name.startswith("ham10000-8px-")
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)


def test_read_ham10000_cache_key_changes(ham_root, cache_dir):
    read_ham10000(ham_root, side=8, cache_dir=cache_dir)
    read_ham10000(ham_root, side=12, cache_dir=cache_dir)
    write_image(ham_root / "HAM10000_images_part_1" / "ISIC_0000001.jpg", (0, 0, 0))
    changed = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert len(list(cache_dir.glob("*.npz"))) == 3
    assert changed.images[0].max() < 10


def test_read_ham10000_without_cache(ham_root, tmp_path):
    data = read_ham10000(ham_root, side=8, cache_dir=None)

    assert len(data) == 6
    assert not list(tmp_path.rglob("*.npz"))


def test_read_ham10000_rebuilds_damaged_cache(ham_root, cache_dir):
    first = read_ham10000(ham_root, side=8, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(b"not an npz archive")

    again = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    np.testing.assert_array_equal(again.images, first.images)
    with np.load(cache_file) as rebuilt:
        np.testing.assert_array_equal(rebuilt["images"], first.images)


def test_read_ham10000_corrupt_image_leaves_no_cache(ham_root, cache_dir):
    damaged = ham_root / "HAM10000_images_part_2" / "ISIC_0000004.jpg"
    damaged.write_bytes(damaged.read_bytes()[:40])

    with pytest.raises(ValueError, match="Could not decode image .*ISIC_0000004.jpg"):
        read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_read_ham10000_not_an_image(ham_root, cache_dir):
    (ham_root / "HAM10000_images_part_1" / "ISIC_0000001.jpg").write_text("hello")

    with pytest.raises(ValueError, match="ISIC_0000001.jpg.*damaged or not an image"):
        read_ham10000(ham_root, side=8, cache_dir=cache_dir)


def test_read_ham10000_interrupted_cache_write(ham_root, cache_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    assert list(cache_dir.iterdir()) == []


# read_ham10000: errors.


def test_read_ham10000_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="doi:10.7910/DVN/DBW86T"):
        read_ham10000(tmp_path / "absent")


def test_read_ham10000_missing_metadata(tmp_path, cache_dir):
    root = tmp_path / "ham"
    write_images(root, ("HAM10000_images_part_1",))

    with pytest.raises(FileNotFoundError, match="No HAM10000 metadata file in .*ham"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_missing_images(ham_root, cache_dir):
    (ham_root / "HAM10000_images_part_1" / "ISIC_0000001.jpg").unlink()
    (ham_root / "HAM10000_images_part_2" / "ISIC_0000006.jpg").unlink()

    with pytest.raises(FileNotFoundError) as error:
        read_ham10000(ham_root, cache_dir=cache_dir)

    message = str(error.value)
    assert "2 of 6 images" in message
    assert "ISIC_0000001, ISIC_0000006" in message
    assert "HAM10000_images_part_2" in message


def test_read_ham10000_many_missing_images_preview(ham_root, cache_dir):
    shutil.rmtree(ham_root / "HAM10000_images_part_1")
    shutil.rmtree(ham_root / "HAM10000_images_part_2")

    with pytest.raises(FileNotFoundError, match=r"6 of 6 images.*\(1 more\)"):
        read_ham10000(ham_root, cache_dir=cache_dir)


def test_read_ham10000_unknown_dx(tmp_path, cache_dir):
    rows = list(ROWS)
    rows[2] = rows[2][:2] + ("melanoma",) + rows[2][3:]
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=rows)
    write_images(root, ("images",))

    with pytest.raises(
        ValueError, match=r"unknown dx code\(s\) 'melanoma'.*line\(s\) 4"
    ):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_dx_case_and_spaces(tmp_path, cache_dir):
    rows = [row[:2] + (f" {row[2].upper()} ",) + row[3:] for row in ROWS]
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=rows)
    write_images(root, ("images",))

    data = read_ham10000(root, side=8, cache_dir=cache_dir)

    assert data.labels.tolist() == [CLASSES.index(row[2]) for row in ROWS]


def test_read_ham10000_missing_columns(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    (root / "HAM10000_metadata.csv").write_text("image_id,diagnosis\nISIC_0000001,nv\n")

    with pytest.raises(
        ValueError, match=r"lacks the required column\(s\) lesion_id, dx"
    ):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_empty_values(tmp_path, cache_dir):
    rows = list(ROWS)
    rows[1] = ("",) + rows[1][1:]
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=rows)

    with pytest.raises(ValueError, match=r"1 row\(s\) have an empty lesion_id.*3"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_empty_dataset_value(tmp_path, cache_dir):
    rows = list(ROWS)
    rows[0] = rows[0][:7] + ("",)
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=rows)

    with pytest.raises(ValueError, match="empty dataset"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_repeated_image_ids(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=ROWS + ROWS[:1])

    with pytest.raises(ValueError, match="ISIC_0000001 appear in more than one row"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_header_only(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    write_metadata(root, rows=[])

    with pytest.raises(ValueError, match="header but no rows"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_unseparated_header(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    (root / "HAM10000_metadata").write_text("lesion_id image_id dx\n")

    with pytest.raises(ValueError, match="neither comma nor tab separated"):
        read_ham10000(root, cache_dir=cache_dir)


def test_read_ham10000_not_utf8(tmp_path, cache_dir):
    root = tmp_path / "ham"
    root.mkdir()
    (root / "HAM10000_metadata.csv").write_bytes(b"lesion_id,image_id,dx\n\xff\xfe\n")

    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_ham10000(root, cache_dir=cache_dir)


@pytest.mark.parametrize("side", [4, 0, 2.5, True, "28"])
def test_read_ham10000_invalid_side(ham_root, side):
    with pytest.raises(ValueError, match="side must be an int of at least 8"):
        read_ham10000(ham_root, side=side, cache_dir=None)


# SkinLesionData.


def test_subset_by_indices_and_mask(ham_root, cache_dir):
    data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    picked = data.subset([4, 0])
    masked = data.subset(data.labels == CLASSES.index("vasc"))

    assert picked.image_ids.tolist() == ["ISIC_0000005", "ISIC_0000001"]
    assert picked.sites.tolist() == ["siteA", "siteA"]
    assert picked.metadata["image_id"].tolist() == ["ISIC_0000005", "ISIC_0000001"]
    np.testing.assert_array_equal(picked.images[1], data.images[0])
    assert masked.image_ids.tolist() == ["ISIC_0000005", "ISIC_0000006"]
    assert masked.name == "HAM10000"


def test_subset_rejects_wrong_mask_length(ham_root, cache_dir):
    data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    with pytest.raises(ValueError, match="bool mask needs 6 entries"):
        data.subset(np.ones(3, dtype=bool))


def test_label_counts_and_side(ham_root, cache_dir):
    data = read_ham10000(ham_root, side=8, cache_dir=cache_dir)

    counts = data.label_counts()

    assert counts.index.tolist() == list(CLASSES)
    assert counts.to_dict() == {
        "akiec": 0, "bcc": 1, "bkl": 0, "df": 0, "mel": 1, "nv": 2, "vasc": 2,
    }  # fmt: skip
    assert data.side == 8


def test_skin_lesion_data_rejects_misaligned_fields():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    ids = np.array(["a", "b", "c"])

    with pytest.raises(ValueError, match="lesion_ids has 2 rows but there are 3"):
        SkinLesionData(
            images=images,
            labels=np.zeros(3, np.int64),
            image_ids=ids,
            lesion_ids=ids[:2],
            sites=None,
            official_split=None,
            name="test",
            has_lesion_ids=True,
            metadata=pd.DataFrame({"image_id": ids}),
        )


def test_skin_lesion_data_rejects_bad_labels():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    ids = np.array(["a", "b"])

    with pytest.raises(ValueError, match="labels must lie in 0..6"):
        SkinLesionData(
            images=images,
            labels=np.array([0, 7]),
            image_ids=ids,
            lesion_ids=ids,
            sites=None,
            official_split=None,
            name="test",
            has_lesion_ids=True,
            metadata=pd.DataFrame({"image_id": ids}),
        )


# DermaMNIST.


def write_dermamnist(path: Path, *, side=28, sizes=(5, 2, 3), **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{name}_images"] = rng.integers(0, 256, (size, side, side, 3), np.uint8)
        arrays[f"{name}_labels"] = (np.arange(size) % 7).reshape(-1, 1).astype(np.uint8)
    arrays.update(overrides)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_read_dermamnist_file(tmp_path):
    path = write_dermamnist(tmp_path / "dermamnist.npz")

    data = read_dermamnist(path)

    assert len(data) == 10
    assert data.name == "DermaMNIST"
    assert data.images.shape == (10, 28, 28, 3)
    assert not data.has_lesion_ids
    assert data.sites is None
    assert data.official_split.tolist() == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2]
    assert data.image_ids[0] == "dermamnist_train_00000"
    assert data.image_ids[5] == "dermamnist_val_00000"
    assert len(set(data.lesion_ids)) == 10
    np.testing.assert_array_equal(data.lesion_ids, data.image_ids)
    assert data.metadata["dx"].tolist()[:3] == ["akiec", "bcc", "bkl"]
    with np.load(path) as raw:
        np.testing.assert_array_equal(data.images[5:7], raw["val_images"])


def test_read_dermamnist_folder_and_sizes(tmp_path):
    write_dermamnist(tmp_path / "a" / "dermamnist_64.npz", side=64)
    write_dermamnist(tmp_path / "b" / "dermamnist.npz")
    write_dermamnist(tmp_path / "b" / "dermamnist_128.npz", side=8)

    only_64 = read_dermamnist(tmp_path / "a")
    preferred = read_dermamnist(tmp_path / "b")

    assert only_64.side == 64
    assert preferred.side == 28


def test_read_dermamnist_folder_with_several_files(tmp_path):
    write_dermamnist(tmp_path / "dermamnist_64.npz", side=8)
    write_dermamnist(tmp_path / "dermamnist_128.npz", side=8)

    with pytest.raises(ValueError, match="several DermaMNIST files"):
        read_dermamnist(tmp_path)


def test_read_dermamnist_labels_without_trailing_axis(tmp_path):
    path = write_dermamnist(tmp_path / "d.npz", train_labels=np.array([6, 5, 4, 3, 2]))

    data = read_dermamnist(path)

    assert data.labels[:5].tolist() == [6, 5, 4, 3, 2]


def test_read_dermamnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read_dermamnist(tmp_path / "dermamnist.npz")

    message = str(error.value)
    assert "https://zenodo.org/records/10519652/files/dermamnist.npz" in message
    assert "0744692d530f8e62ec473284d019b0c7" in message
    assert str(tmp_path / "dermamnist.npz") in message
    assert "download=True" in message


def test_read_dermamnist_missing_file_in_folder_names_64(tmp_path):
    with pytest.raises(FileNotFoundError, match="dermamnist_64.npz.*b70a2f56"):
        read_dermamnist(tmp_path / "dermamnist_64.npz")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"val_labels": None}, r"lacks the DermaMNIST key\(s\) val_labels"),
        (
            {"train_images": np.zeros((5, 28, 28, 3), np.float32)},
            "train_images must be uint8",
        ),
        (
            {"test_images": np.zeros((3, 28, 28), np.uint8)},
            r"test_images must be uint8 of shape \(N, side, side, 3\)",
        ),
        ({"val_labels": np.array([[1], [9]])}, r"val_labels must lie in 0..6.*1..9"),
        ({"val_labels": np.array([[1]])}, r"val_labels must have shape \(2, 1\)"),
        ({"val_labels": np.array([[0.5], [1.0]])}, "val_labels must be integers"),
        (
            {"val_images": np.zeros((2, 8, 8, 3), np.uint8)},
            r"different image sides \[8, 28\]",
        ),
    ],
)
def test_read_dermamnist_invalid_arrays(tmp_path, overrides, match):
    path = write_dermamnist(tmp_path / "dermamnist.npz", **overrides)

    with pytest.raises(ValueError, match=match):
        read_dermamnist(path)


def test_read_dermamnist_empty(tmp_path):
    path = write_dermamnist(tmp_path / "dermamnist.npz", sizes=(0, 0, 0))

    with pytest.raises(ValueError, match="contains no images"):
        read_dermamnist(path)


def test_read_dermamnist_damaged_file(tmp_path):
    path = tmp_path / "dermamnist.npz"
    path.write_bytes(b"PK\x03\x04 truncated")

    with pytest.raises(ValueError, match="Could not read .*dermamnist.npz.*download"):
        read_dermamnist(path)


def fake_download(content: bytes, calls: list):
    def download(url, root, filename=None, md5=None):
        calls.append((url, Path(root), filename, md5))
        (Path(root) / filename).write_bytes(content)

    return download


def test_download_dermamnist_moves_verified_file(tmp_path, monkeypatch):
    source = write_dermamnist(tmp_path / "source.npz")
    calls = []
    monkeypatch.setattr(
        datasets, "download_url", fake_download(source.read_bytes(), calls)
    )

    path = download_dermamnist(tmp_path / "data")

    assert path == tmp_path / "data" / "dermamnist.npz"
    assert path.read_bytes() == source.read_bytes()
    url, root, filename, md5 = calls[0]
    assert url == "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1"
    assert filename == "dermamnist.npz"
    assert md5 == "0744692d530f8e62ec473284d019b0c7"
    assert root.parent == tmp_path / "data"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dermamnist.npz"]


def test_download_dermamnist_64_uses_its_url(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "download_url", fake_download(b"x", calls))

    path = download_dermamnist(tmp_path, side=64)

    assert path.name == "dermamnist_64.npz"
    assert calls[0][0].endswith("/dermamnist_64.npz?download=1")
    assert calls[0][3] == "b70a2f5635c6199aeaa28c31d7202e1f"


def test_download_dermamnist_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(datasets, "download_url", offline)

    with pytest.raises(ConnectionError) as error:
        download_dermamnist(tmp_path)

    message = str(error.value)
    assert "https://zenodo.org/records/10519652/files/dermamnist.npz" in message
    assert f"save it as {tmp_path / 'dermamnist.npz'}" in message
    assert "Name or service not known" in message
    assert list(tmp_path.iterdir()) == []


def test_download_dermamnist_checksum_mismatch(tmp_path, monkeypatch):
    def corrupted(*args, **kwargs):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(datasets, "download_url", corrupted)

    with pytest.raises(ValueError, match="does not match its MD5"):
        download_dermamnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_dermamnist_skips_verified_file(tmp_path, monkeypatch):
    path = write_dermamnist(tmp_path / "dermamnist.npz")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(datasets.DERMAMNIST_MD5, 28, md5)
    calls = []
    monkeypatch.setattr(datasets, "download_url", fake_download(b"new", calls))

    assert download_dermamnist(tmp_path) == path
    assert calls == []


def test_download_dermamnist_unknown_side(tmp_path):
    with pytest.raises(ValueError, match=r"sides \[28, 64, 128, 224\], got side=32"):
        download_dermamnist(tmp_path, side=32)


def test_read_dermamnist_download_opt_in(tmp_path, monkeypatch):
    source = write_dermamnist(tmp_path / "source.npz")
    calls = []
    monkeypatch.setattr(
        datasets, "download_url", fake_download(source.read_bytes(), calls)
    )

    data = read_dermamnist(tmp_path / "data" / "dermamnist.npz", download=True)

    assert len(data) == 10
    assert len(calls) == 1


# load_dataset.


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(datasets, "DATA_DIR", tmp_path / "data")
    return tmp_path / "data"


def test_load_dataset_synthetic(data_dir):
    data = load_dataset("synthetic", n_images=120, seed=3, side=16)
    folder = data_dir / "synthetic-n120-seed3"
    written = (folder / "HAM10000_metadata.csv").stat().st_mtime_ns

    again = load_dataset("Synthetic", n_images=120, seed=3, side=16)

    assert data.name == "synthetic"
    assert len(data) == 120
    assert data.images.shape == (120, 16, 16, 3)
    assert data.sites is not None
    assert data.has_lesion_ids
    assert (folder / "HAM10000_metadata.csv").stat().st_mtime_ns == written
    assert len(list((data_dir / "cache").glob("*.npz"))) == 1
    np.testing.assert_array_equal(again.images, data.images)


def test_load_dataset_ham10000_default_folder(data_dir):
    make_ham(data_dir / "HAM10000")

    data = load_dataset("ham10000", side=8)

    assert data.name == "HAM10000"
    assert len(data) == 6
    assert (data_dir / "cache").is_dir()


def test_load_dataset_ham10000_missing(data_dir):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("ham10000")

    message = str(error.value)
    assert str(data_dir / "HAM10000") in message
    assert "doi:10.7910/DVN/DBW86T" in message
    assert "Kaggle" in message


def test_load_dataset_dermamnist(data_dir):
    write_dermamnist(data_dir / "dermamnist.npz")
    write_dermamnist(data_dir / "dermamnist_64.npz", side=64)

    data = load_dataset("dermamnist")
    large = load_dataset("dermamnist", side=64)

    assert data.name == "DermaMNIST"
    assert data.side == 28
    assert large.side == 64


def test_load_dataset_dermamnist_missing(data_dir):
    with pytest.raises(FileNotFoundError, match="download_dermamnist"):
        load_dataset("dermamnist")


def test_load_dataset_dermamnist_other_side(data_dir):
    path = write_dermamnist(data_dir / "small.npz")

    with pytest.raises(ValueError, match="contains 28 px images but side=64"):
        load_dataset("dermamnist", root=path, side=64)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="expected one of synthetic, ham10000"):
        load_dataset("isic2019")


# images_to_tensor.


def test_images_to_tensor_layout_and_range():
    images = np.zeros((2, 4, 5, 3), np.uint8)
    images[1, 2, 3] = (255, 0, 51)

    tensor = images_to_tensor(images)

    assert tensor.shape == (2, 3, 4, 5)
    assert tensor.dtype == torch.float32
    assert tensor[1, :, 2, 3].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert float(tensor.sum()) == pytest.approx(1.2)


def test_images_to_tensor_rejects_floats():
    with pytest.raises(TypeError, match="images must be uint8"):
        images_to_tensor(np.zeros((1, 4, 4, 3), np.float32))


def test_images_to_tensor_rejects_single_image():
    with pytest.raises(ValueError, match=r"shape \(N, height, width, 3\)"):
        images_to_tensor(np.zeros((4, 4, 3), np.uint8))
