"""Tests for the synthetic HAM10000-layout generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import helpers.synthetic as synthetic
from helpers.classes import CLASSES
from helpers.datasets import read_ham10000
from helpers.synthetic import (
    HAM10000_SITE_CLASS_COUNTS,
    IMAGE_SIZE,
    MARKER_FILE,
    SITES,
    ensure_synthetic_ham10000,
    site_class_counts,
    write_synthetic_ham10000,
)

COLUMNS = [
    "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset",
]  # fmt: skip


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """One data set of 1000 images shared by the read-only tests."""
    return write_synthetic_ham10000(
        tmp_path_factory.mktemp("synthetic") / "n1000", n_images=1000, seed=0
    )


@pytest.fixture(scope="module")
def metadata(written) -> pd.DataFrame:
    return pd.read_csv(written / "HAM10000_metadata.csv")


def read_pixels(root: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.asarray(Image.open(path)) for path in root.rglob("*.jpg")}


# Counts per site and class.


def test_site_class_counts_full_size_is_ham10000():
    counts = site_class_counts(10015)

    np.testing.assert_array_equal(counts.to_numpy(), HAM10000_SITE_CLASS_COUNTS)
    assert counts.index.tolist() == list(SITES)
    assert counts.columns.tolist() == list(CLASSES)


@pytest.mark.parametrize("n_images", [100, 300, 3000, 12345])
def test_site_class_counts_scale_and_sum(n_images):
    counts = site_class_counts(n_images).to_numpy()
    expected = HAM10000_SITE_CLASS_COUNTS * n_images / 10015

    assert counts.sum() == n_images
    assert np.all(np.abs(counts - expected) < 1)


@pytest.mark.parametrize("n_images", [99, 200_001, 3000.0, True])
def test_site_class_counts_rejects_sizes(n_images):
    with pytest.raises(ValueError, match="n_images must be an int in 100..200000"):
        site_class_counts(n_images)


def test_written_counts_match_table(metadata):
    table = pd.crosstab(metadata["dataset"], metadata["dx"])
    table = table.reindex(index=SITES, columns=CLASSES, fill_value=0)

    np.testing.assert_array_equal(table.to_numpy(), site_class_counts(1000).to_numpy())


def test_class_frequencies_close_to_ham10000(metadata):
    share = metadata["dx"].value_counts(normalize=True)
    ham_share = HAM10000_SITE_CLASS_COUNTS.sum(axis=0) / 10015

    for code, expected in zip(CLASSES, ham_share, strict=True):
        assert share.get(code, 0.0) == pytest.approx(expected, abs=0.005)


def test_site_sizes_close_to_ham10000(metadata):
    share = metadata["dataset"].value_counts(normalize=True)
    ham_share = HAM10000_SITE_CLASS_COUNTS.sum(axis=1) / 10015

    for site, expected in zip(SITES, ham_share, strict=True):
        assert share[site] == pytest.approx(expected, abs=0.002)


# Layout and metadata.


def test_layout_matches_ham10000(written, metadata):
    part_1 = sorted(p.stem for p in (written / "HAM10000_images_part_1").glob("*.jpg"))
    part_2 = sorted(p.stem for p in (written / "HAM10000_images_part_2").glob("*.jpg"))

    assert list(metadata.columns) == COLUMNS
    assert len(metadata) == 1000
    assert len(part_1) == round(1000 * 5000 / 10015)
    assert part_1 + part_2 == sorted(metadata["image_id"])
    assert metadata["image_id"].is_unique
    assert metadata["image_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert metadata["lesion_id"].str.fullmatch(r"HAM_\d{7}").all()
    marker = json.loads((written / MARKER_FILE).read_text())
    assert marker["n_images"] == 1000
    assert marker["seed"] == 0


def test_images_are_4_by_3_jpegs(written):
    path = next((written / "HAM10000_images_part_1").glob("*.jpg"))

    with Image.open(path) as image:
        assert image.format == "JPEG"
        assert image.size == IMAGE_SIZE
        assert image.mode == "RGB"
    assert IMAGE_SIZE[0] * 3 == IMAGE_SIZE[1] * 4


def test_metadata_values_are_plausible(metadata):
    age = metadata["age"].dropna()

    assert set(metadata["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert set(metadata["sex"]) <= {"male", "female", "unknown"}
    assert metadata["localization"].nunique() >= 10
    assert age.between(0, 85).all()
    assert (age % 5 == 0).all()
    assert 40 < age.mean() < 65


def test_dx_type_is_consistent_with_diagnosis(metadata):
    follow_up = metadata[metadata["dx_type"] == "follow_up"]
    malignant = metadata[metadata["dx"].isin(["mel", "bcc", "akiec"])]

    assert len(follow_up) > 0
    assert set(follow_up["dx"]) == {"nv"}
    assert set(malignant["dx_type"]) == {"histo"}


def test_patient_fields_shared_by_lesion(metadata):
    per_lesion = metadata.groupby("lesion_id")[["dx", "dx_type", "age", "sex"]]

    assert (per_lesion.nunique(dropna=False) == 1).all().all()


# Lesions.


def test_lesions_with_several_images(metadata):
    images_per_lesion = metadata.groupby("lesion_id").size()

    assert images_per_lesion.max() >= 3
    assert 0.15 < (images_per_lesion > 1).mean() < 0.35
    assert len(images_per_lesion) == pytest.approx(1000 * 7470 / 10015, rel=0.05)


def test_images_per_lesion_by_site(metadata):
    per_site = metadata.groupby("dataset")["lesion_id"]
    ratio = per_site.size() / per_site.nunique()

    assert ratio["vidir_molemax"] == 1.0
    assert ratio["rosendahl"] == pytest.approx(2259 / 1552, abs=0.15)
    assert ratio["vidir_modern"] == pytest.approx(3363 / 1695, abs=0.2)
    assert ratio["vienna_dias"] > 1.1


def test_a_lesion_photographed_at_two_sites(metadata):
    sites_per_lesion = metadata.groupby("lesion_id")["dataset"].nunique()
    shared = sites_per_lesion[sites_per_lesion > 1].index
    rows = metadata[metadata["lesion_id"].isin(shared)]

    assert len(shared) == round(9 * 1000 / 10015)
    assert set(rows["dataset"]) == {"vidir_modern", "vidir_molemax"}
    assert set(rows["dx"]) == {"nv"}


def test_views_of_one_lesion_are_similar_but_not_equal(written, metadata):
    data = read_ham10000(written, side=28, cache_dir=None)
    pixels = data.images.reshape(len(data), -1).astype(float)
    lesions = data.lesion_ids
    first, second = [], []
    for lesion in np.unique(lesions):
        members = np.flatnonzero(lesions == lesion)
        if members.size >= 2:
            first.append(members[0])
            second.append(members[1])
    first, second = np.array(first), np.array(second)
    same = np.abs(pixels[first] - pixels[second]).mean(axis=1)
    other = np.abs(pixels[first] - pixels[np.roll(second, 1)]).mean(axis=1)

    assert np.all(same > 0)
    assert np.median(same) < 0.8 * np.median(other)


# Visual cues.


def test_class_cues_differ_in_colour(written):
    data = read_ham10000(written, side=28, cache_dir=None)
    centre = data.images[:, 10:18, 10:18].reshape(len(data), -1, 3).astype(float)
    brightness = centre.mean(axis=(1, 2))
    redness = (centre[..., 0] - centre[..., 1]).mean(axis=1)

    def mean_of(values, code):
        return values[data.labels == CLASSES.index(code)].mean()

    assert mean_of(brightness, "mel") < mean_of(brightness, "nv")
    assert mean_of(brightness, "nv") < mean_of(brightness, "bcc")
    assert mean_of(redness, "vasc") > mean_of(redness, "nv")


def test_sites_differ_in_colour_cast(written):
    data = read_ham10000(written, side=28, cache_dir=None)
    nevi = data.labels == CLASSES.index("nv")
    channel_mean = {
        site: data.images[nevi & (data.sites == site)].mean(axis=(0, 1, 2))
        for site in SITES
    }
    blue_minus_red = {site: mean[2] - mean[0] for site, mean in channel_mean.items()}

    assert blue_minus_red["vidir_modern"] > blue_minus_red["rosendahl"] + 5


# Determinism.


def test_same_seed_same_files(tmp_path):
    first = write_synthetic_ham10000(tmp_path / "a", n_images=150, seed=7)
    second = write_synthetic_ham10000(tmp_path / "b", n_images=150, seed=7)
    first_pixels, second_pixels = read_pixels(first), read_pixels(second)

    assert (first / "HAM10000_metadata.csv").read_bytes() == (
        second / "HAM10000_metadata.csv"
    ).read_bytes()
    assert first_pixels.keys() == second_pixels.keys()
    for image_id, pixels in first_pixels.items():
        np.testing.assert_array_equal(pixels, second_pixels[image_id])


def test_other_seed_other_data(tmp_path):
    first = write_synthetic_ham10000(tmp_path / "a", n_images=150, seed=7)
    other = write_synthetic_ham10000(tmp_path / "b", n_images=150, seed=8)
    first_metadata = pd.read_csv(first / "HAM10000_metadata.csv")
    other_metadata = pd.read_csv(other / "HAM10000_metadata.csv")
    first_pixels = read_pixels(first)
    other_pixels = read_pixels(other)

    assert not first_metadata.equals(other_metadata)
    first_counts = first_metadata["dx"].value_counts().sort_index()
    other_counts = other_metadata["dx"].value_counts().sort_index()
    pd.testing.assert_series_equal(first_counts, other_counts)
    shared_id = sorted(first_pixels)[0]
    assert not np.array_equal(first_pixels[shared_id], other_pixels[shared_id])


# Writing safely.


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_render = synthetic._render

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_ham10000(tmp_path / "data", n_images=100, seed=0)

    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten(tmp_path):
    root = write_synthetic_ham10000(tmp_path / "data", n_images=100, seed=0)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic_ham10000(root, n_images=100, seed=1)


def test_overwrite_replaces_generated_folder(tmp_path):
    root = write_synthetic_ham10000(tmp_path / "data", n_images=100, seed=0)

    write_synthetic_ham10000(root, n_images=120, seed=1, overwrite=True)

    assert json.loads((root / MARKER_FILE).read_text())["seed"] == 1
    assert len(list(root.rglob("*.jpg"))) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_overwrite_refuses_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")

    with pytest.raises(FileExistsError, match="not written by this generator"):
        write_synthetic_ham10000(root, n_images=100, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"


def test_empty_folder_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()

    write_synthetic_ham10000(root, n_images=100)

    assert (root / "HAM10000_metadata.csv").is_file()


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_invalid_seed(tmp_path, seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        write_synthetic_ham10000(tmp_path / "data", n_images=100, seed=seed)


# ensure_synthetic_ham10000.


def test_ensure_writes_once(tmp_path):
    root = ensure_synthetic_ham10000(tmp_path / "data", n_images=100, seed=0)
    written = (root / "HAM10000_metadata.csv").stat().st_mtime_ns

    ensure_synthetic_ham10000(root, n_images=100, seed=0)

    assert (root / "HAM10000_metadata.csv").stat().st_mtime_ns == written


def test_ensure_rewrites_other_version(tmp_path):
    root = ensure_synthetic_ham10000(tmp_path / "data", n_images=100, seed=0)
    marker = json.loads((root / MARKER_FILE).read_text())
    marker["version"] = -1
    (root / MARKER_FILE).write_text(json.dumps(marker))

    ensure_synthetic_ham10000(root, n_images=100, seed=0)

    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["version"] == synthetic.GENERATOR_VERSION


def test_ensure_refuses_foreign_folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")

    with pytest.raises(FileExistsError, match="not written by this generator"):
        ensure_synthetic_ham10000(root, n_images=100)
