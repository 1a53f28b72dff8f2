"""Write a synthetic stand-in for HAM10000: dermoscopy-like images in its layout.

The generator models what matters for federated learning on HAM10000, not how
dermoscopy looks in detail:

- the seven diagnoses at HAM10000's frequencies, and the four acquisition sites
  at their sizes, each with its own class mix (the `dataset` column);
- several images of one lesion (slightly different views), as many per lesion
  as at each real site, and a few lesions photographed at two sites;
- visual cues per diagnosis:
  - melanoma: large, asymmetric, irregular border, several colours including
    blue-grey regression areas;
  - nevus: round, regular, uniform brown with a fine network;
  - basal cell carcinoma: pearly pink with branching red vessels and blue-grey
    nests;
  - actinic keratosis: a rough, reddish, scaly patch;
  - benign keratosis: waxy light brown with a sharp edge;
  - dermatofibroma: small, a brown ring round a pale centre;
  - vascular lesion: red-purple with dark lacunae;
- patient skin tone, hair, uneven lighting and vignetting;
- a colour cast, zoom, field of view, sharpness and noise level per site.

Some lesions of each class borrow part of their look from a class it is often
confused with (melanoma from nevus, for example). That borrowing, the
within-class variation and the pixel noise set how hard the task is. The
constants below were calibrated once, then fixed (they are not settings). With
the tutorial CNN at 28 px and 3000 images, pooled training reached a balanced
accuracy of 0.49 to 0.73 over seeds 0-2 (real HAM10000 gives small CNNs about
0.6). Local-only training on the smallest site reached a quarter to a third of
that, and plain federated averaging about 0.6 of it, a gap that five local
epochs with FedProx closed.

NOTE: seed 0 was measured with notebook 3's settings, seeds 1 and 2 with a close
variant of them (2-core CPU). The spread across seeds comes mostly from the test
set, which contains only a handful of images of the rarest classes.

Everything is drawn from one seed, so the same seed writes the same files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers.classes import CLASSES

__all__ = [
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MARKER_FILE",
    "SITES",
    "ensure_synthetic_ham10000",
    "site_class_counts",
    "write_synthetic_ham10000",
]

logger = logging.getLogger(__name__)

# Bump whenever the images or metadata change, so that old folders are rewritten.
GENERATOR_VERSION = 4
MARKER_FILE = "synthetic.json"
IMAGE_SIZE = (96, 72)  # width, height: the 4:3 shape of HAM10000's 600 x 450 images
MIN_IMAGES = 100
MAX_IMAGES = 200_000

SITES = ("rosendahl", "vidir_modern", "vidir_molemax", "vienna_dias")

# HAM10000 images per site and diagnosis (columns in CLASSES order) and lesions per
# site, from Tschandl, Rosendahl and Kittler, Sci. Data 2018.
HAM10000_SITE_CLASS_COUNTS = np.array(
    [
        [295, 296, 490, 30, 342, 803, 3],
        [32, 211, 475, 51, 680, 1832, 82],
        [0, 2, 124, 30, 24, 3720, 54],
        [0, 5, 10, 4, 67, 350, 3],
    ]
)
HAM10000_SITE_LESIONS = np.array([1552, 1695, 3954, 278])
HAM10000_IMAGES = int(HAM10000_SITE_CLASS_COUNTS.sum())  # 10015
HAM10000_PART_1 = 5000  # images in HAM10000_images_part_1; the rest are in part 2
HAM10000_CROSS_SITE_LESIONS = 9

# Lesions with 1..6 images at the three sites other than vidir_molemax (where every
# lesion has one image): HAM10000's counts minus vidir_molemax's 3954 single ones.
LESION_SIZE_COUNTS = np.array([1560, 1423, 490, 34, 5, 4])

_LOCALIZATIONS = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "unknown", "upper extremity",
)  # fmt: skip
# Approximate HAM10000 frequencies of the localizations above.
_LOCALIZATION_WEIGHTS = np.array(
    [1022, 7, 2192, 407, 56, 745, 319, 48, 90, 2077, 168, 128, 1404, 234, 1118], float
)
# Per-diagnosis tilt of the localization weights: keratinocyte cancers sit on
# sun-exposed head and hands, nevi on the trunk.
_LOCALIZATION_TILT = {
    "akiec": {"face": 6.0, "scalp": 3.0, "ear": 3.0, "hand": 3.0, "back": 0.6},
    "bcc": {"face": 5.0, "scalp": 2.0, "ear": 2.0, "neck": 2.0, "back": 0.8},
    "mel": {"back": 1.3, "upper extremity": 1.3, "face": 1.5},
    "nv": {"back": 1.3, "trunk": 1.4, "abdomen": 1.3, "face": 0.3},
}
# Mean and standard deviation of age (years) per diagnosis.
_AGE = {
    "akiec": (66, 11), "bcc": (66, 12), "bkl": (59, 14), "df": (52, 15),
    "mel": (61, 15), "nv": (46, 16), "vasc": (50, 20),
}  # fmt: skip
_AGE_MISSING = 57 / HAM10000_IMAGES
_SEX = (("male", 5406), ("female", 4552), ("unknown", 57))

# dx_type probabilities (histo, follow_up, consensus, confocal). Follow-up is used
# only for nevi, mostly at vidir_molemax (a follow-up clinic); malignant lesions
# are confirmed by histopathology.
_DX_TYPES = ("histo", "follow_up", "consensus", "confocal")
_DX_TYPE_P = {
    "akiec": (1.0, 0.0, 0.0, 0.0),
    "bcc": (1.0, 0.0, 0.0, 0.0),
    "bkl": (0.60, 0.0, 0.337, 0.063),
    "df": (0.55, 0.0, 0.45, 0.0),
    "mel": (1.0, 0.0, 0.0, 0.0),
    "nv": (0.75, 0.10, 0.15, 0.0),
    "vasc": (0.35, 0.0, 0.65, 0.0),
}
_NV_MOLEMAX_DX_TYPE_P = (0.06, 0.90, 0.04, 0.0)

# Visual cues per diagnosis, one value per class in CLASSES order. Sizes are
# radii in units of half the image height at zoom 1; colours are linear RGB in
# 0..1; amounts are blend weights in 0..1.
_CUES = {
    #            akiec  bcc    bkl    df     mel    nv     vasc
    "radius":    (0.50, 0.46, 0.50, 0.30, 0.62, 0.42, 0.34),
    "asymmetry": (0.16, 0.12, 0.10, 0.04, 0.26, 0.04, 0.08),
    "irregular": (0.06, 0.04, 0.03, 0.02, 0.09, 0.012, 0.03),
    "softness":  (0.12, 0.09, 0.025, 0.07, 0.05, 0.045, 0.04),
    "opacity":   (0.60, 0.55, 0.80, 0.75, 0.92, 0.85, 0.88),
    "base_r":    (0.80, 0.86, 0.64, 0.50, 0.34, 0.48, 0.62),
    "base_g":    (0.46, 0.66, 0.47, 0.33, 0.20, 0.30, 0.16),
    "base_b":    (0.40, 0.64, 0.32, 0.24, 0.13, 0.19, 0.28),
    "blotch":    (0.25, 0.40, 0.30, 0.00, 0.55, 0.12, 0.10),
    "blotch_r":  (0.88, 0.42, 0.48, 0.50, 0.46, 0.36, 0.40),
    "blotch_g":  (0.70, 0.46, 0.33, 0.33, 0.50, 0.22, 0.10),
    "blotch_b":  (0.66, 0.56, 0.22, 0.24, 0.60, 0.14, 0.32),
    "dark":      (0.00, 0.05, 0.10, 0.10, 0.50, 0.05, 0.00),
    "network":   (0.00, 0.00, 0.05, 0.15, 0.30, 0.30, 0.00),
    "tangle":    (0.00, 0.00, 0.20, 0.10, 0.90, 0.10, 0.00),
    "vessels":   (0.15, 0.75, 0.00, 0.00, 0.05, 0.00, 0.10),
    "scale":     (0.50, 0.05, 0.25, 0.00, 0.00, 0.00, 0.00),
    "ring":      (0.00, 0.00, 0.00, 0.80, 0.00, 0.00, 0.00),
    "lacunae":   (0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.85),
    "halo":      (0.35, 0.25, 0.00, 0.05, 0.05, 0.00, 0.10),
}  # fmt: skip
_CUE_NAMES = tuple(_CUES)
_CUE_TABLE = np.array([_CUES[name] for name in _CUE_NAMES], dtype=np.float32).T
_DARK = np.array([0.13, 0.08, 0.07], np.float32)
_VESSEL = np.array([0.72, 0.12, 0.16], np.float32)
_LACUNA = np.array([0.34, 0.05, 0.22], np.float32)
_SCALE = np.array([0.93, 0.89, 0.84], np.float32)
_PALE = np.array([0.90, 0.80, 0.74], np.float32)
_HALO = np.array([0.88, 0.55, 0.55], np.float32)
_HAIR = np.array([0.10, 0.07, 0.05], np.float32)

# Commonly confused classes: (class, probability) per diagnosis in CLASSES order.
_CONFUSERS = {
    "akiec": (("bkl", 0.4), ("bcc", 0.4), ("mel", 0.2)),
    "bcc": (("akiec", 0.4), ("bkl", 0.3), ("nv", 0.3)),
    "bkl": (("mel", 0.4), ("nv", 0.3), ("akiec", 0.3)),
    "df": (("nv", 0.6), ("bkl", 0.4)),
    "mel": (("nv", 0.6), ("bkl", 0.4)),
    "nv": (("mel", 0.5), ("bkl", 0.3), ("df", 0.2)),
    "vasc": (("bcc", 0.5), ("nv", 0.5)),
}

# Difficulty. Each lesion's cues are a blend of its own class's cues (weight t)
# and a confuser's (weight 1 - t), with t ~ Beta(_TYPICALITY). The blend is then
# jittered per lesion.
_TYPICALITY = (10.0, 1.0)
_RADIUS_JITTER = 0.15  # log-normal sd of lesion size
_COLOUR_JITTER = 0.05  # log-normal sd of each colour channel
_AMOUNT_JITTER = 0.35  # uniform +- spread of each blend amount, relative
_PIXEL_NOISE = 1.0  # multiplies each site's noise level

# Skin tones of the lightest and darkest patients (linear RGB).
_SKIN_LIGHT = np.array([0.94, 0.78, 0.68], np.float32)
_SKIN_DARK = np.array([0.58, 0.40, 0.30], np.float32)

# Per-site imaging: colour gain and offset, zoom, radius of the circular field of
# view in half-heights (inf: none), contrast, blur weight, noise sd, share of
# images with hair, JPEG quality, vignetting strength.
_SITE_STYLE = {
    "rosendahl": dict(
        gain=(1.06, 0.97, 0.88), offset=(0.02, 0.00, -0.01), zoom=1.00, field=1.55,
        contrast=1.00, blur=0.0, noise=0.020, hair=0.45, quality=90, vignette=0.20,
    ),
    "vidir_modern": dict(
        gain=(0.96, 1.00, 1.07), offset=(0.00, 0.01, 0.02), zoom=1.15,
        field=np.inf, contrast=1.10, blur=0.0, noise=0.015, hair=0.25, quality=92,
        vignette=0.10,
    ),
    "vidir_molemax": dict(
        gain=(1.05, 0.92, 1.01), offset=(0.00, -0.01, 0.01), zoom=0.72, field=1.40,
        contrast=0.92, blur=0.3, noise=0.025, hair=0.35, quality=88, vignette=0.30,
    ),
    "vienna_dias": dict(
        gain=(0.90, 0.98, 0.84), offset=(0.00, 0.03, 0.00), zoom=1.35, field=1.15,
        contrast=0.85, blur=0.8, noise=0.035, hair=0.30, quality=75, vignette=0.35,
    ),
}  # fmt: skip

# Per-view variation between images of one lesion.
_VIEW_SHIFT = 0.10  # sd of the lesion centre, in half-heights
_VIEW_ROTATION = 0.35  # sd in radians around the lesion's own orientation
_VIEW_ZOOM = 0.07  # log-normal sd
_VIEW_GAIN = 0.05  # log-normal sd of brightness

_HAIR_SLOTS = 4  # at most this many strands per image
_HAIR_WIDTH = (0.012, 0.025)  # in half-heights: about 0.4 to 0.9 pixels
_HAIR_SHADE = (0.3, 0.7)  # how far a strand darkens the pixels under it

# Images rendered per vectorised batch. Small batches keep the arrays in cache;
# the size is fixed because the random draws of a batch depend on it.
_CHUNK = 32


def site_class_counts(n_images: int) -> pd.DataFrame:
    """Return the images per site and diagnosis that the generator writes.

    HAM10000's table scaled to `n_images`, rounded by largest remainder so that the
    cells sum to `n_images` exactly.

    Raises:
        ValueError: if `n_images` is outside MIN_IMAGES..MAX_IMAGES.
    """
    n_images = _check_n_images(n_images)
    expected = HAM10000_SITE_CLASS_COUNTS * (n_images / HAM10000_IMAGES)
    counts = np.floor(expected).astype(np.int64)
    remainder = (expected - counts).ravel()
    # Stable sort, so ties go to the first cell in table order.
    order = np.argsort(-remainder, kind="stable")
    counts.ravel()[order[: n_images - counts.sum()]] += 1
    return pd.DataFrame(
        counts,
        index=pd.Index(SITES, name="dataset"),
        columns=pd.Index(CLASSES, name="dx"),
    )


def write_synthetic_ham10000(
    root: str | os.PathLike,
    *,
    n_images: int = 3000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate synthetic images and write them in the HAM10000 layout.

    Writes `HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex,
    localization, dataset), the JPEGs `<image_id>.jpg` (96 x 72 px) split over
    `HAM10000_images_part_1` and `_part_2` as in the real archive, and a marker
    `synthetic.json` with the generator version, `n_images` and `seed`. All is
    written to a temporary folder next to `root` and renamed into place at the
    end, so an interrupted run leaves no partial folder. 10015 images is
    HAM10000's full size.

    Args:
        root: folder to create.
        n_images: number of images, MIN_IMAGES..MAX_IMAGES.
        seed: seed of every random draw; the same seed writes the same files.
        overwrite: replace `root` if it is a folder this function wrote before.

    Returns:
        `root` as a Path.

    Raises:
        ValueError: if `n_images` or `seed` is invalid.
        FileExistsError: if `root` exists (and `overwrite` is False, or it was not
            written by this generator).
    """
    root = Path(root)
    n_images = _check_n_images(n_images)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if root.exists() and not _is_empty_folder(root):
        if not overwrite:
            raise FileExistsError(
                f"{root} already exists; pass overwrite=True to replace it, or "
                "choose another folder."
            )
        if not (root / MARKER_FILE).is_file():
            raise FileExistsError(
                f"{root} exists and was not written by this generator (no "
                f"{MARKER_FILE}); it is left untouched. Choose another folder."
            )

    metadata, image_lesion, lesions = _draw_dataset(n_images, int(seed))
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.partial-"))
    try:
        _write_folder(partial, metadata, image_lesion, lesions, int(seed))
        _swap_into_place(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise

    logger.info("Wrote %d synthetic images to %s", n_images, root)
    return root


def ensure_synthetic_ham10000(
    root: str | os.PathLike, *, n_images: int = 3000, seed: int = 0
) -> Path:
    """Write the synthetic data set into `root` unless an up-to-date copy is there.

    A folder written by an older generator version, or with other `n_images` or
    `seed`, is rewritten.

    Raises:
        FileExistsError: if `root` exists but was not written by this generator.
    """
    root = Path(root)
    marker = root / MARKER_FILE
    if not marker.is_file():
        if root.exists() and not _is_empty_folder(root):
            raise FileExistsError(
                f"{root} exists and was not written by this generator (no "
                f"{MARKER_FILE}); it is left untouched. Choose another folder."
            )
        return write_synthetic_ham10000(root, n_images=n_images, seed=seed)

    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = None
    wanted = _marker(n_images, seed)
    if isinstance(found, dict) and all(found.get(k) == v for k, v in wanted.items()):
        return root
    logger.info("Rewriting %s: it was generated with %s", root, found)
    return write_synthetic_ham10000(root, n_images=n_images, seed=seed, overwrite=True)


# Drawing the data set: which images, lesions, sites and metadata.


def _check_n_images(n_images: int) -> int:
    if (
        isinstance(n_images, bool)
        or not isinstance(n_images, (int, np.integer))
        or not MIN_IMAGES <= n_images <= MAX_IMAGES
    ):
        raise ValueError(
            f"n_images must be an int in {MIN_IMAGES}..{MAX_IMAGES}, got "
            f"{n_images!r}; HAM10000's full size is {HAM10000_IMAGES}."
        )
    return int(n_images)


def _marker(n_images: int, seed: int) -> dict:
    return {
        "generator": "helpers.synthetic",
        "version": GENERATOR_VERSION,
        "n_images": int(n_images),
        "seed": int(seed),
    }


def _lesion_size_probabilities(mean: float) -> np.ndarray:
    """Tilt LESION_SIZE_COUNTS geometrically until its mean lesion size is `mean`."""
    sizes = np.arange(1, LESION_SIZE_COUNTS.size + 1)
    if mean <= 1.0:
        return np.eye(sizes.size)[0]

    low, high = 1e-3, 1e3
    for _ in range(100):
        tilt = np.sqrt(low * high)
        weights = LESION_SIZE_COUNTS * tilt ** (sizes - 1.0)
        if (weights * sizes).sum() / weights.sum() < mean:
            low = tilt
        else:
            high = tilt
    return weights / weights.sum()


def _draw_dataset(
    n_images: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """Draw images, lesions, sites and metadata (no pixels yet).

    Returns the metadata table (one row per image, sorted by image_id), the lesion
    index of each row, and per-lesion arrays (dx, appearance parameters).
    """
    rng = np.random.default_rng([seed, 0])
    counts = site_class_counts(n_images).to_numpy()

    image_lesion, image_site, lesion_dx, lesion_site = [], [], [], []
    n_lesions = 0
    for site_index in range(len(SITES)):
        mean_size = (
            HAM10000_SITE_CLASS_COUNTS[site_index].sum()
            / (HAM10000_SITE_LESIONS[site_index])
        )
        probabilities = _lesion_size_probabilities(mean_size)
        for class_index in range(len(CLASSES)):
            count = int(counts[site_index, class_index])
            if count == 0:
                continue
            sizes = rng.choice(probabilities.size, size=count, p=probabilities) + 1
            ends = np.cumsum(sizes)
            n_cell_lesions = int(np.searchsorted(ends, count)) + 1
            sizes = sizes[:n_cell_lesions]
            sizes[-1] -= ends[n_cell_lesions - 1] - count
            image_lesion.append(np.repeat(np.arange(n_cell_lesions) + n_lesions, sizes))
            image_site.append(np.full(count, site_index))
            lesion_dx.append(np.full(n_cell_lesions, class_index))
            lesion_site.append(np.full(n_cell_lesions, site_index))
            n_lesions += n_cell_lesions

    image_lesion = np.concatenate(image_lesion)
    image_site = np.concatenate(image_site)
    lesion_dx = np.concatenate(lesion_dx)
    lesion_site = np.concatenate(lesion_site)
    image_lesion = _merge_cross_site_lesions(
        image_lesion, lesion_dx, lesion_site, n_images, rng
    )

    # Renumber lesions densely (merged ones vanish) and in random id order.
    used, image_lesion = np.unique(image_lesion, return_inverse=True)
    lesion_dx, lesion_site = lesion_dx[used], lesion_site[used]
    lesions = _draw_lesions(lesion_dx, lesion_site, rng)
    lesion_ids = np.array(
        [f"HAM_{number:07d}" for number in rng.permutation(used.size)]
    )
    image_ids = np.array(
        [f"ISIC_{24306 + number:07d}" for number in rng.permutation(n_images)]
    )

    metadata = pd.DataFrame(
        {
            "lesion_id": lesion_ids[image_lesion],
            "image_id": image_ids,
            "dx": np.asarray(CLASSES)[lesion_dx[image_lesion]],
            "dx_type": lesions["dx_type"][image_lesion],
            "age": lesions["age"][image_lesion],
            "sex": lesions["sex"][image_lesion],
            "localization": lesions["localization"][image_lesion],
            "dataset": np.asarray(SITES)[image_site],
        }
    )
    order = np.argsort(image_ids)
    metadata = metadata.iloc[order].reset_index(drop=True)
    return metadata, image_lesion[order], lesions


def _merge_cross_site_lesions(
    image_lesion: np.ndarray,
    lesion_dx: np.ndarray,
    lesion_site: np.ndarray,
    n_images: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Give a few vidir_molemax nevi the lesion id of a vidir_modern nevus.

    HAM10000 has 9 such two-site lesions among 10015 images; this keeps the rate.
    The vidir_molemax image then shows the same lesion under that site's imaging.
    """
    n_pairs = round(HAM10000_CROSS_SITE_LESIONS * n_images / HAM10000_IMAGES)
    nv = CLASSES.index("nv")
    modern = np.flatnonzero((lesion_site == 1) & (lesion_dx == nv))
    molemax = np.flatnonzero((lesion_site == 2) & (lesion_dx == nv))
    n_pairs = min(n_pairs, modern.size, molemax.size)
    if n_pairs == 0:
        return image_lesion

    targets = rng.choice(modern, size=n_pairs, replace=False)
    sources = rng.choice(molemax, size=n_pairs, replace=False)
    merged = image_lesion.copy()
    for source, target in zip(sources, targets, strict=True):
        merged[image_lesion == source] = target
    return merged


def _draw_lesions(
    lesion_dx: np.ndarray, lesion_site: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draw per-lesion metadata (patient and diagnosis method) and appearance."""
    n = lesion_dx.size
    lesions: dict[str, np.ndarray] = {"dx": lesion_dx}

    dx_type = np.empty(n, dtype=object)
    for class_index, code in enumerate(CLASSES):
        for site_index, site in enumerate(SITES):
            members = np.flatnonzero(
                (lesion_dx == class_index) & (lesion_site == site_index)
            )
            p = _DX_TYPE_P[code]
            if code == "nv" and site == "vidir_molemax":
                p = _NV_MOLEMAX_DX_TYPE_P
            dx_type[members] = rng.choice(_DX_TYPES, size=members.size, p=p)
    lesions["dx_type"] = dx_type.astype(str)

    mean, sd = np.array([_AGE[code] for code in CLASSES], float).T
    age = rng.normal(mean[lesion_dx], sd[lesion_dx])
    age = np.clip(np.round(age / 5.0) * 5.0, 0.0, 85.0)
    age[rng.random(n) < _AGE_MISSING] = np.nan
    lesions["age"] = age

    sex_names, sex_counts = zip(*_SEX, strict=True)
    sex_p = np.array(sex_counts, float) / sum(sex_counts)
    lesions["sex"] = rng.choice(sex_names, size=n, p=sex_p)

    localization = np.empty(n, dtype=object)
    for class_index, code in enumerate(CLASSES):
        members = np.flatnonzero(lesion_dx == class_index)
        weights = _LOCALIZATION_WEIGHTS.copy()
        for place, factor in _LOCALIZATION_TILT.get(code, {}).items():
            weights[_LOCALIZATIONS.index(place)] *= factor
        localization[members] = rng.choice(
            _LOCALIZATIONS, size=members.size, p=weights / weights.sum()
        )
    lesions["localization"] = localization.astype(str)

    lesions.update(_draw_appearance(lesion_dx, rng))
    return lesions


def _draw_appearance(
    lesion_dx: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draw each lesion's look: blended class cues, shape, texture and skin."""
    n = lesion_dx.size
    confuser = np.empty(n, dtype=np.int64)
    for class_index, code in enumerate(CLASSES):
        members = np.flatnonzero(lesion_dx == class_index)
        names, p = zip(*_CONFUSERS[code], strict=True)
        choices = [CLASSES.index(name) for name in names]
        confuser[members] = rng.choice(choices, size=members.size, p=p)

    typicality = rng.beta(*_TYPICALITY, size=n).astype(np.float32)[:, None]
    cues = typicality * _CUE_TABLE[lesion_dx] + (1 - typicality) * _CUE_TABLE[confuser]
    cue = {name: cues[:, index] for index, name in enumerate(_CUE_NAMES)}

    looks: dict[str, np.ndarray] = {}
    looks["radius"] = cue["radius"] * np.exp(rng.normal(0, _RADIUS_JITTER, n))
    looks["softness"] = cue["softness"] * np.exp(rng.normal(0, 0.2, n))
    looks["opacity"] = np.clip(cue["opacity"] * np.exp(rng.normal(0, 0.08, n)), 0, 1)
    looks["elongation"] = np.exp(np.abs(rng.normal(0, 0.12, n)))
    looks["orientation"] = rng.uniform(0, 2 * np.pi, n)

    # Radius harmonics: orders 1-3 make the outline asymmetric, 5-10 irregular
    # (weaker as the order grows, so borders look ragged rather than star-shaped).
    orders = np.array([1, 2, 3, 5, 7, 10], np.float32)
    strength = np.where(
        orders <= 3, cue["asymmetry"][:, None], cue["irregular"][:, None] * 5 / orders
    )
    looks["harmonic_orders"] = np.broadcast_to(orders, (n, orders.size))
    looks["harmonic_amplitude"] = strength * np.abs(rng.normal(0, 1, (n, orders.size)))
    looks["harmonic_phase"] = rng.uniform(0, 2 * np.pi, (n, orders.size))

    def jittered(name: str) -> np.ndarray:
        spread = rng.uniform(1 - _AMOUNT_JITTER, 1 + _AMOUNT_JITTER, n)
        return np.clip(cue[name] * spread, 0, 1)

    for name in ("blotch", "dark", "network", "tangle", "vessels", "scale"):
        looks[name] = jittered(name)
    for name in ("ring", "lacunae", "halo"):
        looks[name] = jittered(name)

    def colour(prefix: str) -> np.ndarray:
        rgb = np.stack([cue[f"{prefix}_{c}"] for c in "rgb"], axis=1)
        return np.clip(rgb * np.exp(rng.normal(0, _COLOUR_JITTER, (n, 3))), 0, 1)

    looks["base"] = colour("base")
    looks["blotch_colour"] = colour("blotch")

    # Smooth random fields in the lesion's frame: three cosines each.
    for name, low, high in (("field1", 1.5, 3.5), ("field2", 1.5, 3.5),
                            ("field3", 3.0, 6.0)):  # fmt: skip
        magnitude = rng.uniform(low, high, (n, 3))
        angle = rng.uniform(0, 2 * np.pi, (n, 3))
        looks[f"{name}_fx"] = magnitude * np.cos(angle)
        looks[f"{name}_fy"] = magnitude * np.sin(angle)
        looks[f"{name}_phase"] = rng.uniform(0, 2 * np.pi, (n, 3))
    looks["network_frequency"] = rng.uniform(11, 15, n)

    tone = rng.beta(1.6, 4.0, n)[:, None]
    looks["skin"] = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone
    return {name: np.asarray(value, np.float32) for name, value in looks.items()}


# Rendering pixels.


def _site_style_arrays() -> dict[str, np.ndarray]:
    keys = _SITE_STYLE[SITES[0]].keys()
    return {
        key: np.array([_SITE_STYLE[site][key] for site in SITES], np.float32)
        for key in keys
    }


def _draw_views(
    image_lesion: np.ndarray,
    image_site: np.ndarray,
    lesions: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw per-image view parameters: position, rotation, zoom, light, hair."""
    n = image_lesion.size
    style = _site_style_arrays()
    views: dict[str, np.ndarray] = {}
    views["cx"] = np.clip(rng.normal(0, _VIEW_SHIFT, n), -0.3, 0.3)
    views["cy"] = np.clip(rng.normal(0, _VIEW_SHIFT, n), -0.3, 0.3)
    views["angle"] = lesions["orientation"][image_lesion] + rng.normal(
        0, _VIEW_ROTATION, n
    )
    views["scale"] = (
        lesions["radius"][image_lesion]
        * style["zoom"][image_site]
        * np.exp(rng.normal(0, _VIEW_ZOOM, n))
    )
    views["gain"] = np.exp(rng.normal(0, _VIEW_GAIN, n))
    views["gradient"] = rng.normal(0, 0.06, (n, 2))

    has_hair = rng.random(n) < style["hair"][image_site]
    strands = rng.integers(1, _HAIR_SLOTS + 1, n)
    views["hair_on"] = has_hair[:, None] & (np.arange(_HAIR_SLOTS) < strands[:, None])
    views["hair_x"] = rng.uniform(-1.3, 1.3, (n, _HAIR_SLOTS))
    views["hair_y"] = rng.uniform(-1.0, 1.0, (n, _HAIR_SLOTS))
    views["hair_angle"] = rng.uniform(0, np.pi, (n, _HAIR_SLOTS))
    views["hair_bend"] = rng.normal(0, 0.5, (n, _HAIR_SLOTS))
    views["hair_width"] = rng.uniform(_HAIR_WIDTH[0], _HAIR_WIDTH[1], (n, _HAIR_SLOTS))
    views["hair_shade"] = rng.uniform(_HAIR_SHADE[0], _HAIR_SHADE[1], (n, _HAIR_SLOTS))
    return {
        name: value if value.dtype == bool else value.astype(np.float32)
        for name, value in views.items()
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _per_image(values: np.ndarray) -> np.ndarray:
    """Reshape (B,) per-image values to broadcast over (B, H, W)."""
    return values[:, None, None]


def _field(look: dict[str, np.ndarray], name: str, ux, uy) -> np.ndarray:
    """Evaluate a smooth random field with unit variance at lesion coordinates."""
    fx = look[f"{name}_fx"][:, :, None, None]
    fy = look[f"{name}_fy"][:, :, None, None]
    phase = look[f"{name}_phase"][:, :, None, None]
    waves = np.cos(fx * ux[:, None] + fy * uy[:, None] + phase)
    return waves.sum(axis=1) * np.float32(np.sqrt(2.0 / 3.0))


def _render(
    look: dict[str, np.ndarray],
    view: dict[str, np.ndarray],
    site: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Render a batch of images as float RGB (B, H, W, 3) in 0..1.

    `look` contains the lesion parameters of each image, `view` its view
    parameters and `site` its site's imaging parameters, all indexed by image.
    """
    width, height = IMAGE_SIZE
    ys = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (height / 2)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (height / 2)
    x, y = xs[None, None, :], ys[None, :, None]

    ux, uy = _lesion_frame(look, view, x, y)
    mask, inside = _lesion_mask(look, ux, uy)
    field1 = _field(look, "field1", ux, uy)
    field2 = _field(look, "field2", ux, uy)
    field3 = _field(look, "field3", ux, uy)
    colour = _lesion_colour(look, ux, uy, inside, (field1, field2, field3), rng)

    # Skin with a faint texture and a pink halo round inflamed lesions, then the
    # lesion over it.
    skin = look["skin"][:, None, None, :] * (1 + 0.013 * field3[..., None])
    halo = _per_image(look["halo"]) * np.exp(-(((inside - 1.15) / 0.35) ** 2))
    skin += (halo * (1 - mask))[..., None] * (_HALO - skin)
    cover = _per_image(look["opacity"]) * mask
    image = skin + cover[..., None] * (colour - skin)

    image = _add_hair(image, view, x, y)
    return _apply_light_and_camera(image, view, site, x, y, rng)


def _lesion_frame(
    look: dict[str, np.ndarray], view: dict[str, np.ndarray], x, y
) -> tuple[np.ndarray, np.ndarray]:
    """Map image coordinates to the lesion's frame: centred, rotated, unit radius."""
    cos, sin = np.cos(view["angle"]), np.sin(view["angle"])
    dx, dy = x - _per_image(view["cx"]), y - _per_image(view["cy"])
    stretch = np.sqrt(look["elongation"])
    along = _per_image(1 / (view["scale"] * stretch))
    across = _per_image(stretch / view["scale"])
    ux = (_per_image(cos) * dx + _per_image(sin) * dy) * along
    uy = (_per_image(cos) * dy - _per_image(sin) * dx) * across
    return ux, uy


def _lesion_mask(
    look: dict[str, np.ndarray], ux: np.ndarray, uy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the soft lesion mask and each pixel's radius relative to the outline.

    The outline is a circle whose radius varies with angle by a sum of cosines.
    """
    rho = np.sqrt(ux * ux + uy * uy)
    phi = np.arctan2(uy, ux)
    outline = np.ones_like(rho)
    for k in range(look["harmonic_orders"].shape[1]):
        order = _per_image(look["harmonic_orders"][:, k])
        amplitude = _per_image(look["harmonic_amplitude"][:, k])
        phase = _per_image(look["harmonic_phase"][:, k])
        outline += amplitude * np.cos(order * phi + phase)
    outline = np.maximum(outline, 0.3)
    mask = _sigmoid((outline - rho) / _per_image(look["softness"]))
    return mask, rho / outline


def _lesion_colour(
    look: dict[str, np.ndarray],
    ux: np.ndarray,
    uy: np.ndarray,
    inside: np.ndarray,
    fields: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint the lesion's colour (B, H, W, 3) from its cues, layer by layer.

    From the bottom: base colour, blotches of a second colour, dark blotches, the
    pigment network (darkening), a pale centre and dark ring, vessels, lacunae,
    white scale. Each colour layer covers what lies beneath by its weight and a
    darkening layer scales it. The layers are composited top down: each layer's
    share of the final colour is its weight times what the layers above leave
    visible, so the colour is one weighted sum of at most seven RGB sources.
    """
    field1, field2, field3 = fields
    batch, height, width = ux.shape

    def weight(name: str, pattern: np.ndarray) -> np.ndarray:
        return _per_image(look[name]) * pattern

    frequency = _per_image(look["network_frequency"])
    bend = _per_image(look["tangle"]) * np.float32(np.pi) * field1
    grid = np.cos(frequency * ux + bend) * np.cos(frequency * uy - bend)
    lacunae = np.cos(6.0 * ux + 2.0 * field2) * np.cos(6.0 * uy + 2.0 * field3)
    speckle = rng.random((batch, height, width), dtype=np.float32)

    # Top layer first; a colour layer is (source index, weight), a darkening one
    # (None, factor).
    layers = [
        (6, weight("scale", np.clip((speckle - 0.55) / 0.45, 0, 1))),
        (5, weight("lacunae", _sigmoid((lacunae - 0.35) / 0.1))),
        (4, weight("vessels", np.exp(-((field3 / 0.15) ** 2)))),
        (None, 1 - weight("ring", 0.35 * np.exp(-(((inside - 0.8) / 0.15) ** 2)))),
        (3, weight("ring", _sigmoid((0.5 - inside) / 0.08))),
        (None, 1 - weight("network", 0.45 * np.maximum(grid, 0))),
        (2, weight("dark", _sigmoid((field2 - 0.5) / 0.12))),
        (1, weight("blotch", _sigmoid((field1 - 0.3) / 0.15))),
    ]
    shares = np.empty((batch, 7, height * width), np.float32)
    visible = np.ones((batch, height, width), np.float32)
    for source, amount in layers:
        if source is None:
            visible *= amount
        else:
            shares[:, source] = (amount * visible).reshape(batch, -1)
            visible *= 1 - amount
    shares[:, 0] = visible.reshape(batch, -1)

    sources = np.empty((batch, 7, 3), np.float32)
    sources[:, 0] = look["base"]
    sources[:, 1] = look["blotch_colour"]
    sources[:, 2:] = np.stack([_DARK, _PALE, _VESSEL, _LACUNA, _SCALE])
    colour = np.matmul(shares.transpose(0, 2, 1), sources)
    return colour.reshape(batch, height, width, 3)


def _apply_light_and_camera(
    image: np.ndarray,
    view: dict[str, np.ndarray],
    site: dict[str, np.ndarray],
    x,
    y,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply lighting, the dermoscope's field, the site's camera, blur and noise."""
    radius2 = x * x + y * y
    gradient = view["gradient"]
    light = (
        _per_image(view["gain"])
        * (1 + _per_image(gradient[:, 0]) * x + _per_image(gradient[:, 1]) * y)
        * (1 - _per_image(site["vignette"]) * radius2 / 2.8)
        * _sigmoid((_per_image(site["field"]) - np.sqrt(radius2)) / 0.04)
    )

    # Colour cast and contrast in one affine map:
    # ((v * gain + offset) - 0.5) * contrast + 0.5.
    contrast = site["contrast"][:, None]
    scale = (site["gain"] * contrast)[:, None, None, :]
    shift = ((site["offset"] - 0.5) * contrast + 0.5)[:, None, None, :]
    image = image * light[..., None] * scale + shift

    blurred = np.flatnonzero(site["blur"] > 0)
    if blurred.size:
        part = image[blurred]
        amount = site["blur"][blurred][:, None, None, None]
        image[blurred] = part + amount * (_binomial_blur(part) - part)

    # Uniform noise with the site's standard deviation (cheaper than Gaussian).
    noise = rng.random(image.shape, dtype=np.float32) - 0.5
    sd = _PIXEL_NOISE * site["noise"] * np.float32(np.sqrt(12.0))
    image += sd[:, None, None, None] * noise
    return np.clip(image, 0, 1, out=image)


def _add_hair(image: np.ndarray, view: dict[str, np.ndarray], x, y) -> np.ndarray:
    """Draw dark, slightly bent hair strands over the images that have them."""
    hair = np.zeros(image.shape[:3], np.float32)
    for slot in range(_HAIR_SLOTS):
        members = np.flatnonzero(view["hair_on"][:, slot])
        if members.size == 0:
            continue
        angle = view["hair_angle"][members, slot][:, None, None]
        cos, sin = np.cos(angle), np.sin(angle)
        dx = x - view["hair_x"][members, slot][:, None, None]
        dy = y - view["hair_y"][members, slot][:, None, None]
        along = cos * dx + sin * dy
        bend = view["hair_bend"][members, slot][:, None, None]
        across = cos * dy - sin * dx + bend * along * along
        width = view["hair_width"][members, slot][:, None, None]
        shade = view["hair_shade"][members, slot][:, None, None]
        strand = shade * np.exp(-((across / width) ** 2))
        hair[members] = np.maximum(hair[members], strand)
    return image + hair[..., None] * (_HAIR - image)


def _binomial_blur(image: np.ndarray) -> np.ndarray:
    """Blur (B, H, W, 3) images with a 3 x 3 binomial kernel, edges replicated."""
    padded = np.pad(image, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    rows = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
    padded = np.pad(rows, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * padded[:, :, :-2] + 0.5 * padded[:, :, 1:-1] + 0.25 * padded[:, :, 2:]


# Writing the folder.


def _write_folder(
    folder: Path,
    metadata: pd.DataFrame,
    image_lesion: np.ndarray,
    lesions: dict[str, np.ndarray],
    seed: int,
) -> None:
    n_images = len(metadata)
    image_site = metadata["dataset"].map(SITES.index).to_numpy()
    views = _draw_views(
        image_lesion, image_site, lesions, np.random.default_rng([seed, 1])
    )
    style = _site_style_arrays()
    appearance = {
        name: value
        for name, value in lesions.items()
        if isinstance(value, np.ndarray) and value.dtype == np.float32
    }

    n_part_1 = round(n_images * HAM10000_PART_1 / HAM10000_IMAGES)
    parts = (folder / "HAM10000_images_part_1", folder / "HAM10000_images_part_2")
    for part in parts:
        part.mkdir()

    image_ids = metadata["image_id"].to_numpy()
    for start in range(0, n_images, _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, n_images))
        look = {name: value[image_lesion[rows]] for name, value in appearance.items()}
        view = {name: value[rows] for name, value in views.items()}
        site = {name: value[image_site[rows]] for name, value in style.items()}
        rng = np.random.default_rng([seed, 2, start // _CHUNK])
        pixels = np.round(_render(look, view, site, rng) * 255).astype(np.uint8)
        for offset, row in enumerate(rows):
            part = parts[0] if row < n_part_1 else parts[1]
            Image.fromarray(pixels[offset]).save(
                part / f"{image_ids[row]}.jpg",
                format="JPEG",
                quality=int(site["quality"][offset]),
            )

    metadata.to_csv(folder / "HAM10000_metadata.csv", index=False, float_format="%.1f")
    marker = _marker(n_images, seed)
    marker["note"] = (
        "Synthetic dermoscopy-like images in the HAM10000 layout; not real patients."
    )
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _swap_into_place(partial: Path, root: Path) -> None:
    """Rename the finished folder to `root`, replacing an old copy if there is one."""
    old = None
    if root.exists():
        if _is_empty_folder(root):
            root.rmdir()
        else:
            old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
            os.replace(root, old / root.name)
    os.replace(partial, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
