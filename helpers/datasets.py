"""Read HAM10000, DermaMNIST and the synthetic default into one in-memory form.

Every reader returns a `SkinLesionData`: uint8 images of one square side, integer
labels in `CLASSES` order, an image id and a lesion id per image, and the
acquisition site per image where the data set records one. `load_dataset` is the
switch the notebooks' `DATASET` setting goes through.

HAM10000 images are decoded once per side and cached under `data/cache/`, so a
second run reads one file. The synthetic default is written in the HAM10000 file
layout and read by the same reader, so the real loading code runs every time.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.utils import check_integrity, download_url

from helpers.classes import CLASS_NAMES, CLASSES, MELANOMA_INDEX
from helpers.synthetic import ensure_synthetic_ham10000

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "DATASET_NAMES",
    "DATA_DIR",
    "MELANOMA",
    "MELANOMA_INDEX",
    "SkinLesionData",
    "download_dermamnist",
    "images_to_tensor",
    "load_dataset",
    "read_dermamnist",
    "read_ham10000",
]

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MELANOMA = "mel"
DATASET_NAMES = ("synthetic", "ham10000", "dermamnist")

HAM10000_SOURCES = (
    "Harvard Dataverse (doi:10.7910/DVN/DBW86T, "
    "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/DBW86T)"
    ", or its Kaggle and ISIC archive mirrors"
)
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata")
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Bump when the decoding below changes, so that old cache files are not reused.
CACHE_FORMAT = "ham10000-decoded-v1"

# URL and MD5 per image side, from the medmnist package's INFO table
# (medmnist/info.py, MedMNIST v3, Zenodo record 10519652).
DERMAMNIST_URL = "https://zenodo.org/records/10519652/files/{filename}?download=1"
DERMAMNIST_MD5 = {
    28: "0744692d530f8e62ec473284d019b0c7",
    64: "b70a2f5635c6199aeaa28c31d7202e1f",
    128: "2defd784463fa5243564e855ed717de1",
    224: "8974907d8e169bef5f5b96bc506ae45d",
}
DERMAMNIST_SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class SkinLesionData:
    """Images with their labels, ids and sites, aligned row by row.

    Attributes:
        images: (N, side, side, 3) uint8 RGB images.
        labels: (N,) int64 index into CLASSES.
        image_ids: (N,) str image id.
        lesion_ids: (N,) str lesion id; images of one lesion share it. Without
            real lesion ids (DermaMNIST) each image gets its own made-up id and
            `has_lesion_ids` is False.
        sites: (N,) str acquisition site (HAM10000's `dataset` column), or None
            when the data set does not record one.
        official_split: (N,) str "train", "val" or "test" where the data set
            ships a split (DermaMNIST), else None.
        name: "synthetic", "HAM10000" or "DermaMNIST".
        has_lesion_ids: whether `lesion_ids` come from the data set.
        metadata: one row per image, in the same order as `images`.
    """

    images: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    lesion_ids: np.ndarray
    sites: np.ndarray | None
    official_split: np.ndarray | None
    name: str
    has_lesion_ids: bool
    metadata: pd.DataFrame

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                "images must be a uint8 array of shape (N, side, side, 3), got "
                f"dtype {images.dtype} and shape {images.shape}."
            )
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be square, got shape {images.shape}.")
        if self.labels.dtype != np.int64:
            raise ValueError(f"labels must be int64, got {self.labels.dtype}.")
        if self.labels.size and (
            self.labels.min() < 0 or self.labels.max() >= len(CLASSES)
        ):
            raise ValueError(
                f"labels must lie in 0..{len(CLASSES) - 1}, got "
                f"{self.labels.min()}..{self.labels.max()}."
            )

        n = images.shape[0]
        columns = {
            "labels": self.labels,
            "image_ids": self.image_ids,
            "lesion_ids": self.lesion_ids,
            "sites": self.sites,
            "official_split": self.official_split,
            "metadata": self.metadata,
        }
        for field, value in columns.items():
            if value is not None and len(value) != n:
                raise ValueError(
                    f"{field} has {len(value)} rows but there are {n} images; "
                    "every field needs one row per image."
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def side(self) -> int:
        """Image side in pixels."""
        return int(self.images.shape[1])

    def label_counts(self) -> pd.Series:
        """Count images per class code, in CLASSES order (absent classes count 0)."""
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return pd.Series(counts, index=pd.Index(CLASSES, name="dx"), name="images")

    def subset(self, indices: Sequence[int] | np.ndarray) -> SkinLesionData:
        """Return the images at `indices` (int positions or a bool mask) as a copy.

        Raises:
            ValueError: if a bool mask has the wrong length.
            IndexError: if an index is out of range.
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise ValueError(
                    f"a bool mask needs {len(self)} entries, got shape {indices.shape}."
                )
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64, copy=False)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[indices]

        return replace(
            self,
            images=self.images[indices],
            labels=self.labels[indices],
            image_ids=self.image_ids[indices],
            lesion_ids=self.lesion_ids[indices],
            sites=pick(self.sites),
            official_split=pick(self.official_split),
            metadata=self.metadata.iloc[indices].reset_index(drop=True),
        )


def read_ham10000(
    root: str | os.PathLike,
    *,
    side: int = 28,
    cache_dir: str | os.PathLike | None = DATA_DIR / "cache",
) -> SkinLesionData:
    """Read HAM10000 (or a folder in its layout) and resize the images to `side`.

    The metadata file is `HAM10000_metadata.csv`, `.tab` or without extension,
    comma or tab separated, with or without the `dataset` column. Images
    `<image_id>.jpg` are found anywhere below `root`: in
    `HAM10000_images_part_1` and `_part_2`, the `part1`/`part2` spellings, the
    lower-case copies some mirrors add, one folder, or `root` itself. An image
    found in several places is read once, from the first path in sorted order.
    Copies are compared byte by byte, and a UserWarning names any that differ.

    Each image is centre-cropped to its short side, then resized to side x side
    with Lanczos filtering (JPEGs are first decoded at a reduced scale that keeps
    at least 4 x side pixels, which is faster and changes little).

    The decoded arrays are cached in `cache_dir` as `.npz`, keyed by a hash of
    the metadata bytes, the image paths and sizes, and `side`, so any change to
    the files makes a new entry. The cache file is written to a temporary name
    and renamed when complete, so a failed or interrupted run leaves none.

    Args:
        root: folder holding the metadata file and the images.
        side: output image side in pixels, at least 8.
        cache_dir: cache folder, or None to decode every time.

    Raises:
        FileNotFoundError: if `root`, the metadata file or some images are missing.
        ValueError: on missing columns, empty or duplicate ids, unknown `dx`
            codes, or an image that cannot be decoded.
    """
    root = Path(root)
    side = _check_side(side)
    if not root.is_dir():
        raise FileNotFoundError(_ham10000_missing_message(root))

    metadata_path = _find_metadata(root)
    raw_metadata = metadata_path.read_bytes()
    metadata = _parse_metadata(raw_metadata, metadata_path)
    image_files = _find_image_files(root, metadata["image_id"])
    _check_images_found(metadata, image_files, metadata_path, root)

    image_ids = metadata["image_id"].to_numpy(dtype=str)
    cache_path = None
    images = None
    if cache_dir is not None:
        key = _cache_key(raw_metadata, image_ids, image_files, root, side)
        cache_path = Path(cache_dir) / f"ham10000-{side}px-{key[:24]}.npz"
        images = _read_cache(cache_path, image_ids, side)

    if images is None:
        images = _decode_images(image_ids, image_files, side)
        logger.info("Decoded %d images from %s at %d px", len(images), root, side)
        if cache_path is not None:
            _write_cache(cache_path, images, image_ids)

    return _ham10000_data(metadata, images)


def read_dermamnist(
    path: str | os.PathLike, *, download: bool = False
) -> SkinLesionData:
    """Read DermaMNIST (`dermamnist.npz` or a MedMNIST+ `dermamnist_<side>.npz`).

    DermaMNIST is HAM10000 resized and split 7:1:2 by image, in the MedMNIST
    layout. It has no lesion ids and no sites: each image gets a made-up lesion
    id equal to its image id (`has_lesion_ids` is False), `sites` is None, and
    `official_split` is the file's train/val/test split. Its split is by image,
    so near-copies of one lesion can sit in train and test.

    Args:
        path: the `.npz` file, or a folder containing `dermamnist.npz` (or exactly
            one `dermamnist_<side>.npz`).
        download: fetch the official file with its MD5 checked if it is missing.

    Raises:
        FileNotFoundError: if the file is missing and `download` is False. The
            message tells where to get it and where to put it.
        ValueError: if the file is not a valid DermaMNIST `.npz`.
        ConnectionError: if the download fails.
    """
    file, file_side = _locate_dermamnist(Path(path))
    if not file.is_file():
        if not download:
            raise FileNotFoundError(_dermamnist_missing_message(file, file_side))
        file = download_dermamnist(file.parent, side=file_side)

    arrays = _load_dermamnist_arrays(file)
    images, labels, split = _check_dermamnist_arrays(arrays, file)

    image_ids = np.array(
        [
            f"dermamnist_{name}_{index:05d}"
            for name in DERMAMNIST_SPLITS
            for index in range(int(np.sum(split == name)))
        ]
    )
    metadata = pd.DataFrame(
        {
            "image_id": image_ids,
            "lesion_id": image_ids,
            "dx": np.asarray(CLASSES)[labels],
            "split": split,
        }
    )
    return SkinLesionData(
        images=images,
        labels=labels,
        image_ids=image_ids,
        lesion_ids=image_ids.copy(),
        sites=None,
        official_split=split,
        name="DermaMNIST",
        has_lesion_ids=False,
        metadata=metadata,
    )


def download_dermamnist(root: str | os.PathLike = DATA_DIR, *, side: int = 28) -> Path:
    """Download the official DermaMNIST file into `root` and check its MD5.

    Uses torchvision's `download_url`. The file arrives in a temporary folder
    inside `root` and is renamed into place only after its MD5 matches, so a
    failed download leaves nothing. A file already present with the right MD5 is
    not downloaded again.

    Args:
        root: destination folder.
        side: image side of the file: 28 (`dermamnist.npz`) or the MedMNIST+
            sizes 64, 128, 224 (`dermamnist_<side>.npz`).

    Returns:
        Path of the verified file.

    Raises:
        ValueError: on an unknown side, or if the download fails its MD5 check.
        ConnectionError: if the file cannot be fetched (offline, for example).
            The message tells how to fetch it by hand.
    """
    if side not in DERMAMNIST_MD5:
        raise ValueError(
            f"DermaMNIST comes in sides {sorted(DERMAMNIST_MD5)}, got side={side!r}."
        )
    root = Path(root)
    filename = _dermamnist_filename(side)
    target = root / filename
    md5 = DERMAMNIST_MD5[side]
    if target.is_file():
        if check_integrity(str(target), md5):
            return target
        logger.info("%s fails its MD5 check; downloading it again", target)

    url = DERMAMNIST_URL.format(filename=filename)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".dermamnist-download-") as tmp:
        try:
            download_url(url, tmp, filename=filename, md5=md5)
        except RuntimeError as err:
            # torchvision raises RuntimeError when the MD5 does not match.
            raise ValueError(
                f"The downloaded {filename} does not match its MD5 {md5} ({err}). "
                f"Try again later, or fetch it by hand from {url} and save it as "
                f"{target}."
            ) from err
        except OSError as err:
            # urllib's URLError and socket errors are OSErrors.
            raise ConnectionError(
                f"Could not download {url} ({err}). "
                + _dermamnist_manual_steps(target, side)
            ) from err
        os.replace(Path(tmp) / filename, target)

    logger.info("Downloaded %s", target)
    return target


def load_dataset(
    name: str = "synthetic",
    *,
    side: int = 28,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_images: int = 3000,
) -> SkinLesionData:
    """Load the data set a notebook's `DATASET` setting names.

    - "synthetic": the embedded default. Written once into `root` (default
      `data/synthetic-n<n_images>-seed<seed>/`) in the HAM10000 layout by
      `helpers.synthetic`, then read with `read_ham10000`. `seed` and `n_images`
      are used only here.
    - "ham10000": the real HAM10000 in `root` (default `data/HAM10000/`).
    - "dermamnist": the DermaMNIST file `root` (default `data/dermamnist.npz`,
      or `data/dermamnist_<side>.npz` for side 64, 128 or 224). It is never
      downloaded here: call `download_dermamnist()` once to opt in.

    Raises:
        ValueError: on an unknown name, or a DermaMNIST file of another side.
        FileNotFoundError: if the real data are missing. The message tells
            where to get them and where to put them.
    """
    key = name.lower() if isinstance(name, str) else name
    if key == "synthetic":
        folder = (
            Path(root)
            if root is not None
            else DATA_DIR / f"synthetic-n{n_images}-seed{seed}"
        )
        ensure_synthetic_ham10000(folder, n_images=n_images, seed=seed)
        data = read_ham10000(folder, side=side, cache_dir=DATA_DIR / "cache")
        return replace(data, name="synthetic")

    if key == "ham10000":
        folder = Path(root) if root is not None else DATA_DIR / "HAM10000"
        return read_ham10000(folder, side=side, cache_dir=DATA_DIR / "cache")

    if key == "dermamnist":
        if root is not None:
            path = Path(root)
        else:
            default_side = side if side in DERMAMNIST_MD5 else 28
            path = DATA_DIR / _dermamnist_filename(default_side)
        data = read_dermamnist(path)
        if data.side != side:
            raise ValueError(
                f"{path} contains {data.side} px images but side={side} was requested. "
                f"Use side={data.side}, or fetch the {side} px file with "
                f"download_dermamnist(side={side}) if MedMNIST+ has that size "
                f"({sorted(DERMAMNIST_MD5)})."
            )
        return data

    raise ValueError(
        f"Unknown data set {name!r}; expected one of {', '.join(DATASET_NAMES)}."
    )


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """Convert uint8 (N, H, W, 3) images to a float32 (N, 3, H, W) tensor in [0, 1].

    Raises:
        TypeError: if the images are not uint8.
        ValueError: if they do not have shape (N, H, W, 3).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(
            f"images must be uint8 (0..255), got {images.dtype}; pass the arrays "
            "that the readers return."
        )
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(
            f"images must have shape (N, height, width, 3), got {images.shape}; "
            "add a leading axis for a single image."
        )

    channels_first = np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32)
    return torch.from_numpy(channels_first).div_(255.0)


# HAM10000: metadata.


def _check_side(side: int) -> int:
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 8:
        raise ValueError(f"side must be an int of at least 8 pixels, got {side!r}.")
    return int(side)


def _ham10000_missing_message(root: Path) -> str:
    return (
        f"HAM10000 folder {root} not found. Download HAM10000 from "
        f"{HAM10000_SOURCES}; put the metadata file (HAM10000_metadata.csv or "
        f".tab) and the two image folders HAM10000_images_part_1 and "
        f"HAM10000_images_part_2 in {root}."
    )


def _find_metadata(root: Path) -> Path:
    names = {path.name.lower(): path for path in root.iterdir() if path.is_file()}
    for candidate in METADATA_NAMES:
        if candidate.lower() in names:
            return names[candidate.lower()]
    raise FileNotFoundError(
        f"No HAM10000 metadata file in {root}: expected one of "
        f"{', '.join(METADATA_NAMES)}. Download it from {HAM10000_SOURCES} and "
        f"put it in {root}."
    )


def _parse_metadata(raw: bytes, path: Path) -> pd.DataFrame:
    """Parse the metadata bytes into a DataFrame with clean, checked columns."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err}); download the metadata file again."
        ) from err
    header = text.split("\n", 1)[0]
    if "\t" in header:
        separator = "\t"
    elif "," in header:
        separator = ","
    else:
        raise ValueError(
            f"{path}: the first line {header[:80]!r} is neither comma nor tab "
            f"separated; expected a header such as {','.join(REQUIRED_COLUMNS)}."
        )

    try:
        table = pd.read_csv(
            io.StringIO(text), sep=separator, dtype=str, keep_default_na=False
        )
    except pd.errors.ParserError as err:
        raise ValueError(f"{path} could not be parsed as a table: {err}") from err
    table.columns = [str(column).strip().strip('"').lower() for column in table.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the required column(s) {', '.join(missing)}; found "
            f"{', '.join(table.columns)}. Use the HAM10000 metadata file, whose "
            "columns include lesion_id, image_id and dx."
        )
    if table.empty:
        raise ValueError(f"{path} has a header but no rows.")

    for column in table.columns:
        table[column] = table[column].str.strip()
    table["dx"] = table["dx"].str.lower()
    _check_no_blanks(table, path)
    _check_dx_codes(table, path)
    _check_unique_image_ids(table, path)

    if "age" in table.columns:
        table["age"] = pd.to_numeric(table["age"], errors="coerce")
    return table.reset_index(drop=True)


def _line_numbers(mask: pd.Series) -> list[int]:
    # Row 0 of the table is line 2 of the file, after the header.
    return [int(index) + 2 for index in np.flatnonzero(mask.to_numpy())]


def _check_no_blanks(table: pd.DataFrame, path: Path) -> None:
    columns = list(REQUIRED_COLUMNS)
    if "dataset" in table.columns:
        columns.append("dataset")
    for column in columns:
        blank = table[column] == ""
        if blank.any():
            lines = _line_numbers(blank)
            raise ValueError(
                f"{path}: {len(lines)} row(s) have an empty {column} (line(s) "
                f"{_preview(lines)}); fill them in or remove those rows."
            )


def _check_dx_codes(table: pd.DataFrame, path: Path) -> None:
    unknown = ~table["dx"].isin(CLASSES)
    if not unknown.any():
        return
    lines = _line_numbers(unknown)
    codes = sorted(set(table.loc[unknown, "dx"]))
    raise ValueError(
        f"{path}: unknown dx code(s) {', '.join(map(repr, codes))} in "
        f"{len(lines)} row(s) (line(s) {_preview(lines)}); expected one of "
        f"{', '.join(CLASSES)}. Correct or remove those rows."
    )


def _check_unique_image_ids(table: pd.DataFrame, path: Path) -> None:
    repeated = table["image_id"].duplicated(keep=False)
    if repeated.any():
        ids = sorted(set(table.loc[repeated, "image_id"]))
        raise ValueError(
            f"{path}: image_id(s) {_preview(ids)} appear in more than one row; "
            "each image needs exactly one row. Remove the repeated rows."
        )


def _preview(items: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown


# HAM10000: image files.


def _find_image_files(root: Path, image_ids: pd.Series) -> dict[str, list[Path]]:
    """Map each listed image id to every file `<image_id>.<jpg|jpeg|png>` below root.

    Folders are walked in sorted order (hidden ones skipped), so the first path of
    each list is the same on every machine.
    """
    wanted = set(image_ids)
    found: dict[str, list[Path]] = {}
    for folder, subfolders, filenames in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for filename in sorted(filenames):
            stem, suffix = os.path.splitext(filename)
            if suffix.lower() in IMAGE_SUFFIXES and stem in wanted:
                found.setdefault(stem, []).append(Path(folder) / filename)
    return found


def _check_images_found(
    metadata: pd.DataFrame,
    image_files: dict[str, list[Path]],
    metadata_path: Path,
    root: Path,
) -> None:
    missing = [
        image_id for image_id in metadata["image_id"] if image_id not in image_files
    ]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(metadata)} images listed in {metadata_path.name} "
            f"were not found below {root}: {_preview(missing)}. Extract both image "
            "archives (HAM10000_images_part_1 and HAM10000_images_part_2) into "
            f"{root}; each image is a file <image_id>.jpg."
        )


def _cache_key(
    raw_metadata: bytes,
    image_ids: np.ndarray,
    image_files: dict[str, list[Path]],
    root: Path,
    side: int,
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{CACHE_FORMAT}\nside={side}\n".encode())
    digest.update(hashlib.sha256(raw_metadata).digest())
    for image_id in image_ids:
        for path in image_files[image_id]:
            relative = path.relative_to(root).as_posix()
            digest.update(f"{relative}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _decode_images(
    image_ids: np.ndarray, image_files: dict[str, list[Path]], side: int
) -> np.ndarray:
    images = np.empty((len(image_ids), side, side, 3), dtype=np.uint8)
    differing: list[str] = []
    for index, image_id in enumerate(image_ids):
        first, *copies = image_files[image_id]
        data = first.read_bytes()
        for copy in copies:
            if copy.stat().st_size != len(data) or copy.read_bytes() != data:
                differing.append(f"{first} and {copy}")
        images[index] = _decode_image(data, first, side)

    if differing:
        warnings.warn(
            f"{len(differing)} image(s) exist in several copies whose bytes differ, "
            f"for example {differing[0]}. The first path in sorted order was used; "
            "remove the copies you do not want read.",
            UserWarning,
            stacklevel=3,
        )
    return images


def _decode_image(data: bytes, path: Path, side: int) -> np.ndarray:
    """Decode one image, centre-crop it to a square and resize it with Lanczos."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (4 * side, 4 * side))
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Could not decode image {path}: {err}. The file is damaged or not an "
            "image; replace it with a fresh copy from the HAM10000 archive."
        ) from err

    width, height = image.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    box = (left, top, left + short, top + short)
    resized = image.resize((side, side), Image.Resampling.LANCZOS, box=box)
    return np.asarray(resized, dtype=np.uint8)


def _read_cache(path: Path, image_ids: np.ndarray, side: int) -> np.ndarray | None:
    """Return cached images, or None if the file is absent, damaged or stale."""
    if not path.is_file():
        return None
    try:
        # np.load gets an open file so that it is closed even if the archive is
        # damaged (np.load leaves a file it opened itself open in that case).
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as cached:
            images = cached["images"]
            cached_ids = cached["image_ids"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        logger.warning("Ignoring unreadable cache file %s (%s)", path, err)
        return None
    expected_shape = (len(image_ids), side, side, 3)
    if (
        images.shape != expected_shape
        or images.dtype != np.uint8
        or not np.array_equal(cached_ids, image_ids)
    ):
        logger.warning("Ignoring cache file %s: it does not match the data", path)
        return None
    logger.info("Read %d cached images from %s", len(images), path)
    return images


def _write_cache(path: Path, images: np.ndarray, image_ids: np.ndarray) -> None:
    """Write the cache atomically: to a temporary file, then rename it into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp"
        )
    except OSError as err:
        warnings.warn(
            f"Could not create the cache folder {path.parent} ({err}); images will "
            "be decoded again next time.",
            UserWarning,
            stacklevel=3,
        )
        return

    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, images=images, image_ids=image_ids)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _ham10000_data(metadata: pd.DataFrame, images: np.ndarray) -> SkinLesionData:
    labels = np.array([CLASSES.index(dx) for dx in metadata["dx"]], dtype=np.int64)
    sites = None
    if "dataset" in metadata.columns:
        sites = metadata["dataset"].to_numpy(dtype=str)
    return SkinLesionData(
        images=images,
        labels=labels,
        image_ids=metadata["image_id"].to_numpy(dtype=str),
        lesion_ids=metadata["lesion_id"].to_numpy(dtype=str),
        sites=sites,
        official_split=None,
        name="HAM10000",
        has_lesion_ids=True,
        metadata=metadata,
    )


# DermaMNIST.


def _dermamnist_filename(side: int) -> str:
    return "dermamnist.npz" if side == 28 else f"dermamnist_{side}.npz"


def _locate_dermamnist(path: Path) -> tuple[Path, int]:
    """Return the DermaMNIST file that `path` names, and the side its name implies."""
    if path.is_dir():
        candidates = sorted(path.glob("dermamnist*.npz"))
        names = [candidate.name for candidate in candidates]
        if "dermamnist.npz" in names or not candidates:
            return path / "dermamnist.npz", 28
        if len(candidates) > 1:
            raise ValueError(
                f"{path} contains several DermaMNIST files ({', '.join(names)}); "
                "pass the one you want as the path."
            )
        path = candidates[0]

    match = re.fullmatch(r"dermamnist(?:_(\d+))?\.npz", path.name)
    if match is None:
        # Any other file name is read as given. A download needs an official name.
        return path, 28
    return path, int(match.group(1) or 28)


def _dermamnist_manual_steps(target: Path, side: int) -> str:
    filename = _dermamnist_filename(side)
    md5 = DERMAMNIST_MD5.get(side, "unknown")
    return (
        f"Fetch {filename} from {DERMAMNIST_URL.format(filename=filename)} (MD5 "
        f"{md5}; listed on https://medmnist.com) and save it as {target}."
    )


def _dermamnist_missing_message(target: Path, side: int) -> str:
    if side not in DERMAMNIST_MD5:
        return (
            f"DermaMNIST file {target} not found. MedMNIST publishes sides "
            f"{sorted(DERMAMNIST_MD5)}; put one of those files there."
        )
    return (
        f"DermaMNIST file {target} not found. "
        + _dermamnist_manual_steps(target, side)
        + " Or opt in to the checked download: read_dermamnist(path, download=True)"
        f" or helpers.datasets.download_dermamnist(side={side})."
    )


def _load_dermamnist_arrays(file: Path) -> dict[str, np.ndarray]:
    wanted = [
        f"{name}_{kind}" for name in DERMAMNIST_SPLITS for kind in ("images", "labels")
    ]
    try:
        with open(file, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            found = sorted(npz.files)
            arrays = {key: npz[key] for key in wanted if key in found}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"Could not read {file} as an .npz archive ({err}). The file is damaged "
            "or incomplete; delete it and download it again."
        ) from err

    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise ValueError(
            f"{file} lacks the DermaMNIST key(s) {', '.join(missing)}; found "
            f"{', '.join(found) or 'none'}. Expected the MedMNIST layout with "
            f"{', '.join(wanted)}."
        )
    return arrays


def _check_dermamnist_arrays(
    arrays: dict[str, np.ndarray], file: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes, dtypes and label range, then return images, labels, split."""
    sides = set()
    all_images, all_labels, all_splits = [], [], []
    for name in DERMAMNIST_SPLITS:
        images = arrays[f"{name}_images"]
        labels = arrays[f"{name}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[3] != 3
            or images.shape[1] != images.shape[2]
        ):
            raise ValueError(
                f"{file}: {name}_images must be uint8 of shape (N, side, side, 3), "
                f"got dtype {images.dtype} and shape {images.shape}."
            )
        shape = labels.shape
        if labels.ndim == 2 and shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{file}: {name}_labels must have shape ({images.shape[0]}, 1) to "
                f"match {name}_images, got {shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{file}: {name}_labels must be integers, got {labels.dtype}."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise ValueError(
                f"{file}: {name}_labels must lie in 0..{len(CLASSES) - 1} "
                f"({', '.join(CLASSES)}), got {labels.min()}..{labels.max()}."
            )
        sides.add(images.shape[1])
        all_images.append(images)
        all_labels.append(labels.astype(np.int64))
        all_splits.append(np.full(len(labels), name))

    if len(sides) > 1:
        raise ValueError(
            f"{file}: the splits have different image sides {sorted(sides)}; "
            "expected one side for train, val and test."
        )
    images = np.concatenate(all_images)
    if len(images) == 0:
        raise ValueError(f"{file} contains no images.")
    return images, np.concatenate(all_labels), np.concatenate(all_splits)
