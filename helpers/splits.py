"""Split images by lesion into train, validation and test, and into hospitals.

Two steps, in this order. `split_by_lesion` makes one global train/val/test split,
grouped by lesion and stratified by diagnosis. A partitioner then assigns every
image to a hospital, and each hospital's train, validation and test parts are the
intersection of the two, so the pooled test set is the union of the hospitals' test
parts. Every function assigns whole groups (lesions), never single images, so near
copies of one lesion never sit on two sides of a split or in two hospitals.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.classes import CLASSES

SPLITS = ("train", "val", "test")

# Dirichlet draws that leave a hospital without images are redrawn this many times.
MAX_DRAWS = 100


@dataclass(frozen=True, eq=False)
class Partition:
    """An assignment of every image to one hospital.

    Attributes:
        names: hospital names, in hospital-index order.
        assignment: (N,) int64 hospital index per image; read-only.
        description: how the partition was made, for tables and plot titles.
    """

    names: tuple[str, ...]
    assignment: np.ndarray
    description: str

    def __post_init__(self) -> None:
        names = tuple(str(name) for name in self.names)
        if not names:
            raise ValueError("A partition needs at least one hospital name.")
        if len(set(names)) != len(names):
            raise ValueError(f"Hospital names must be unique, got {names}.")

        assignment = np.asarray(self.assignment)
        if assignment.ndim != 1 or not np.issubdtype(assignment.dtype, np.integer):
            raise TypeError(
                "assignment must be a 1-D integer array of hospital indices, got "
                f"dtype {assignment.dtype} and shape {assignment.shape}."
            )
        if assignment.size and (assignment.min() < 0 or assignment.max() >= len(names)):
            raise ValueError(
                f"assignment values must lie in 0..{len(names) - 1} (one per "
                f"hospital name), got {assignment.min()}..{assignment.max()}."
            )

        assignment = assignment.astype(np.int64, copy=True)
        assignment.setflags(write=False)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "assignment", assignment)

    @property
    def n_hospitals(self) -> int:
        """Number of hospitals."""
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """Image count per hospital, in hospital-index order."""
        return np.bincount(self.assignment, minlength=self.n_hospitals)

    def indices(self, hospital: int | str) -> np.ndarray:
        """Return the sorted image indices of one hospital, given by index or name.

        Raises:
            ValueError: if the hospital index or name does not exist.
        """
        if isinstance(hospital, str):
            if hospital not in self.names:
                raise ValueError(
                    f"Unknown hospital {hospital!r}; expected one of {self.names}."
                )
            position = self.names.index(hospital)
        elif isinstance(hospital, (int, np.integer)) and not isinstance(hospital, bool):
            if not 0 <= hospital < self.n_hospitals:
                raise ValueError(
                    f"Hospital index {hospital} is out of range; expected 0.."
                    f"{self.n_hospitals - 1}."
                )
            position = int(hospital)
        else:
            raise TypeError(
                f"hospital must be an int index or a str name, got {hospital!r}."
            )
        return np.flatnonzero(self.assignment == position)


def split_by_lesion(
    labels: np.ndarray,
    lesion_ids: np.ndarray,
    *,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Split images into train, validation and test, grouped by lesion.

    Every lesion goes whole to one side. Lesions are dealt out greedily, classes
    from the rarest and lesions of a class from the largest, with ties in a seeded
    random order. Each lesion goes to the side whose image count for its class is
    furthest below the target fraction, so each class is split close to
    `fractions`, as far as whole lesions allow. A lesion whose images carry
    different labels counts as its most frequent label.

    With `strata` (for example the acquisition site of each image), each
    combination of stratum and class is split close to `fractions`, so every
    site, and so every hospital of the site partition, gets its share of
    validation and test images. Without it a site of one-image lesions would
    fill the held-out parts disproportionately.

    Args:
        labels: (N,) class label per image.
        lesion_ids: (N,) lesion id per image; images of one lesion share an id.
        fractions: target image fractions of train, validation and test; each
            positive, summing to 1.
        seed: seed for the order in which equal-sized lesions are dealt out.
        strata: optional (N,) extra stratification key per image.

    Returns:
        (N,) str array of "train", "val" or "test" per image.

    Raises:
        ValueError: on mismatched lengths, missing ids, invalid fractions, or
            fewer than three lesions.
    """
    labels = _as_1d(labels, "labels")
    lesion_ids = _as_1d(lesion_ids, "lesion_ids")
    _check_same_length(labels=labels, lesion_ids=lesion_ids)
    if labels.size == 0:
        raise ValueError("labels is empty; there are no images to split.")
    fractions = _check_fractions(fractions)
    if strata is not None:
        strata = _as_1d(strata, "strata")
        _check_same_length(labels=labels, strata=strata)
        # One stratification class per (stratum, label) pair that occurs.
        keys = np.char.add(np.char.add(strata.astype(str), "\x1f"), labels.astype(str))
        labels = np.unique(keys, return_inverse=True)[1].astype(np.int64)

    group_of_image, group_class, group_size, class_count = _groups(labels, lesion_ids)
    n_groups = group_size.size
    if n_groups < len(SPLITS):
        raise ValueError(
            f"Splitting needs at least {len(SPLITS)} lesions, one per side, but "
            f"found {n_groups}. Use a data set with more lesions."
        )

    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(n_groups)
    # lexsort sorts by the last key first: rarest class, then largest lesion.
    order = np.lexsort((tiebreak, -group_size, class_count[group_class]))

    target = np.outer(fractions, class_count)
    target_total = fractions * labels.size
    count = np.zeros_like(target)
    count_total = np.zeros(len(SPLITS))
    group_side = np.empty(n_groups, dtype=np.int64)
    for group in order:
        label = group_class[group]
        deficit = target[:, label] - count[:, label]
        side = _first_max(deficit, target_total - count_total)
        group_side[group] = side
        count[side, label] += group_size[group]
        count_total[side] += group_size[group]

    _fill_empty_sides(group_side, group_size)
    return np.asarray(SPLITS)[group_side[group_of_image]]


def partition_by_site(
    sites: np.ndarray, *, groups: np.ndarray | None = None
) -> Partition:
    """Assign each image to the hospital of its acquisition site.

    This is the natural split of HAM10000: one hospital per value of its
    `dataset` column. Hospitals are named after the sites, in alphabetical order.

    Args:
        sites: (N,) acquisition site per image.
        groups: optional (N,) lesion id per image. A lesion photographed at two
            sites then goes whole to the site that has most of its images (the
            alphabetically first on a tie). Without groups every image stays at
            its own site.

    Raises:
        ValueError: on missing sites or mismatched lengths.
    """
    sites = _as_1d(sites, "sites").astype(str)
    if sites.size == 0:
        raise ValueError("sites is empty; expected one acquisition site per image.")

    names, assignment = np.unique(sites, return_inverse=True)
    description = "acquisition site"
    if groups is not None:
        groups = _as_1d(groups, "groups")
        _check_same_length(sites=sites, groups=groups)
        assignment, n_moved = _keep_groups_together(assignment, groups)
        if n_moved:
            description += (
                f" ({n_moved} lesion(s) seen at several sites kept at one site)"
            )
    return Partition(tuple(names), assignment, description)


def partition_iid(
    labels: np.ndarray,
    n_hospitals: int,
    *,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> Partition:
    """Deal groups out to hospitals of near-equal size and near-equal label mix.

    Within each class, groups go in a seeded random order to the hospital that has
    the fewest images of that class (then the fewest images overall), so every
    hospital receives about 1/n_hospitals of each class. This is a stratified IID
    split: it removes the sampling noise of a purely random one.

    Args:
        labels: (N,) class label per image.
        n_hospitals: number of hospitals, at least 1.
        groups: optional (N,) lesion id per image; a lesion goes whole to one
            hospital. Without groups each image is its own group.
        seed: seed for the dealing order.

    Raises:
        ValueError: on mismatched lengths, n_hospitals < 1, or fewer groups than
            hospitals.
    """
    labels, groups = _check_partition_input(labels, groups, n_hospitals)
    group_of_image, group_class, group_size, _ = _groups(labels, groups)
    _check_enough_groups(group_size.size, n_hospitals)

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(group_size.size), -group_size, group_class))
    hospital_rank = rng.permutation(n_hospitals)

    n_classes = int(group_class.max()) + 1
    count = np.zeros((n_hospitals, n_classes), dtype=np.int64)
    group_hospital = np.empty(group_size.size, dtype=np.int64)
    for group in order:
        label = group_class[group]
        keys = (hospital_rank, count.sum(axis=1), count[:, label])
        hospital = int(np.lexsort(keys)[0])
        group_hospital[group] = hospital
        count[hospital, label] += group_size[group]

    return Partition(
        _hospital_names(n_hospitals),
        group_hospital[group_of_image],
        f"IID (stratified), {n_hospitals} hospitals",
    )


def partition_dirichlet(
    labels: np.ndarray,
    n_hospitals: int,
    *,
    alpha: float,
    groups: np.ndarray | None = None,
    seed: int = 0,
    train_mask: np.ndarray | None = None,
) -> Partition:
    """Partition with label skew: each class is shared out by Dirichlet proportions.

    For each class, the hospitals' shares of its images are drawn from
    Dir(alpha, ..., alpha) (label skew after Hsu, Qi and Brown 2019, "Measuring
    the effects of non-identical data distribution for federated visual
    classification"). The class's groups, in a seeded random order, are then cut
    into consecutive runs of those sizes. Small alpha (0.1) gives hospitals that
    see few classes; large alpha (100) approaches the IID split.

    Args:
        labels: (N,) class label per image.
        n_hospitals: number of hospitals, at least 1.
        alpha: Dirichlet concentration, > 0.
        groups: optional (N,) lesion id per image; a lesion goes whole to one
            hospital.
        seed: seed for the proportions and the order of groups.
        train_mask: optional (N,) bool, True for training images. A draw is
            kept only if every hospital gets at least one of them, so that no
            hospital is left with validation or test images alone.

    Raises:
        ValueError: on invalid arguments, or when every one of MAX_DRAWS draws
            leaves some hospital without images (without training images, given
            `train_mask`).
    """
    labels, groups = _check_partition_input(labels, groups, n_hospitals)
    alpha = _check_alpha(alpha)
    group_of_image, group_class, group_size, class_count = _groups(labels, groups)
    _check_enough_groups(group_size.size, n_hospitals)
    train_mask = _check_train_mask(train_mask, labels.size)

    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        shares = rng.dirichlet(np.full(n_hospitals, alpha), size=class_count.size)
        if not np.all(np.isfinite(shares)):
            continue
        group_hospital = _cut_by_shares(group_class, group_size, shares, rng)
        if _covers_every_hospital(
            group_hospital[group_of_image], n_hospitals, train_mask
        ):
            return Partition(
                _hospital_names(n_hospitals),
                group_hospital[group_of_image],
                f"Dirichlet label skew, alpha={alpha:g}",
            )

    raise _empty_hospital_error("Dirichlet label skew", n_hospitals, alpha)


def partition_quantity_skew(
    labels: np.ndarray,
    n_hospitals: int,
    *,
    alpha: float,
    groups: np.ndarray | None = None,
    seed: int = 0,
    train_mask: np.ndarray | None = None,
) -> Partition:
    """Partition with quantity skew: hospital sizes ~ Dir(alpha), labels IID.

    One draw of shares p ~ Dir(alpha, ..., alpha) sets each hospital's share of
    the images. Every class is cut by the same shares (groups in a seeded random
    order, the hospitals' order shuffled per class), so each hospital's label mix
    stays close to the global one while sizes differ. Small alpha gives a few
    large and many tiny hospitals.

    Args:
        labels: (N,) class label per image.
        n_hospitals: number of hospitals, at least 1.
        alpha: Dirichlet concentration, > 0.
        groups: optional (N,) lesion id per image; a lesion goes whole to one
            hospital.
        seed: seed for the shares and the order of groups.
        train_mask: optional (N,) bool, as in `partition_dirichlet`.

    Raises:
        ValueError: on invalid arguments, or when every one of MAX_DRAWS draws
            leaves some hospital without images.
    """
    labels, groups = _check_partition_input(labels, groups, n_hospitals)
    alpha = _check_alpha(alpha)
    group_of_image, group_class, group_size, class_count = _groups(labels, groups)
    _check_enough_groups(group_size.size, n_hospitals)
    train_mask = _check_train_mask(train_mask, labels.size)

    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        share = rng.dirichlet(np.full(n_hospitals, alpha))
        if not np.all(np.isfinite(share)):
            continue
        shares = np.tile(share, (class_count.size, 1))
        group_hospital = _cut_by_shares(group_class, group_size, shares, rng)
        if _covers_every_hospital(
            group_hospital[group_of_image], n_hospitals, train_mask
        ):
            return Partition(
                _hospital_names(n_hospitals),
                group_hospital[group_of_image],
                f"quantity skew, alpha={alpha:g}",
            )

    raise _empty_hospital_error("quantity skew", n_hospitals, alpha)


def natural_partition(
    sites: np.ndarray | None,
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_hospitals: int = 4,
    alpha: float = 0.5,
    seed: int = 0,
    train_mask: np.ndarray | None = None,
) -> Partition:
    """Partition by acquisition site, or by Dirichlet label skew without sites.

    Data sets without a site per image (DermaMNIST, or a HAM10000 copy without its
    `dataset` column) fall back to `partition_dirichlet` with `n_hospitals` and
    `alpha`. The fallback emits a UserWarning and names itself in the description.
    With sites, `n_hospitals`, `alpha` and `seed` are not used.

    Args:
        sites: (N,) acquisition site per image, or None.
        labels: (N,) class label per image.
        groups: optional (N,) lesion id per image; a lesion goes whole to one
            hospital.
        n_hospitals: number of hospitals of the fallback.
        alpha: Dirichlet concentration of the fallback, > 0.
        seed: seed of the fallback.
        train_mask: optional (N,) bool, True for training images. The fallback
            draws until every hospital gets some. With sites, a site without
            any raises ValueError.
    """
    labels = _as_1d(labels, "labels")
    if sites is not None:
        sites = _as_1d(sites, "sites")
        _check_same_length(sites=sites, labels=labels)
        partition = partition_by_site(sites, groups=groups)
        if train_mask is not None:
            mask = _check_train_mask(train_mask, labels.size)
            counts = np.bincount(
                partition.assignment[mask], minlength=partition.n_hospitals
            )
            empty = [
                name for name, n in zip(partition.names, counts, strict=True) if n == 0
            ]
            if empty:
                raise ValueError(
                    f"Sites {empty} have no training images under train_mask, "
                    "so they cannot train as hospitals. Leave those sites' "
                    "images out, or split so that every site has training images."
                )
        return partition

    partition = partition_dirichlet(
        labels,
        n_hospitals,
        alpha=alpha,
        groups=groups,
        seed=seed,
        train_mask=train_mask,
    )
    warnings.warn(
        "This data set has no acquisition site per image, so the natural split "
        f"falls back to Dirichlet label skew with alpha={alpha:g} over "
        f"{n_hospitals} hospitals.",
        UserWarning,
        stacklevel=2,
    )
    description = (
        f"Dirichlet label skew, alpha={alpha:g} (no acquisition sites: fallback)"
    )
    return Partition(partition.names, partition.assignment, description)


def label_table(
    partition: Partition, labels: np.ndarray, *, mask: np.ndarray | None = None
) -> pd.DataFrame:
    """Count images per hospital and class.

    Args:
        partition: the hospitals.
        labels: (N,) class index per image, in 0..len(CLASSES) - 1.
        mask: optional (N,) bool array; only images where it is True are counted,
            for example `split == "train"`.

    Returns:
        DataFrame indexed by hospital name, with one int column per class code in
        CLASSES order and a "total" column.

    Raises:
        ValueError: on mismatched lengths or labels outside the class range.
        TypeError: on non-integer labels or a non-bool mask.
    """
    labels = _as_1d(labels, "labels")
    _check_same_length(labels=labels, assignment=partition.assignment)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must be integer class indices, got dtype {labels.dtype}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(
            f"labels must lie in 0..{len(CLASSES) - 1} (indices into {CLASSES}), "
            f"got {labels.min()}..{labels.max()}."
        )

    hospitals = partition.assignment
    if mask is not None:
        mask = _as_1d(mask, "mask")
        _check_same_length(labels=labels, mask=mask)
        if mask.dtype != bool:
            raise TypeError(
                f"mask must be a bool array, got dtype {mask.dtype}; build one "
                'with a comparison such as split == "train".'
            )
        labels, hospitals = labels[mask], hospitals[mask]

    counts = np.zeros((partition.n_hospitals, len(CLASSES)), dtype=np.int64)
    np.add.at(counts, (hospitals, labels), 1)
    table = pd.DataFrame(
        counts, index=pd.Index(partition.names, name="hospital"), columns=CLASSES
    )
    table["total"] = counts.sum(axis=1)
    return table


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one value per image), got shape {array.shape}."
        )
    if array.dtype == object and pd.isna(array).any():
        raise ValueError(f"{name} contains missing values; fill or drop them first.")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; fill or drop those images first.")
    return array


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"Expected one value per image, but {described}.")


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    array = np.asarray(fractions, dtype=float)
    if array.shape != (len(SPLITS),):
        raise ValueError(
            f"fractions must hold {len(SPLITS)} numbers for {SPLITS}, got "
            f"{fractions!r}."
        )
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"fractions must all be positive, got {fractions!r}.")
    if not np.isclose(array.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(
            f"fractions must sum to 1, got {fractions!r} (sum {array.sum():g})."
        )
    return array


def _check_partition_input(
    labels, groups, n_hospitals
) -> tuple[np.ndarray, np.ndarray]:
    labels = _as_1d(labels, "labels")
    if labels.size == 0:
        raise ValueError("labels is empty; there are no images to partition.")
    if groups is None:
        groups = np.arange(labels.size)
    groups = _as_1d(groups, "groups")
    _check_same_length(labels=labels, groups=groups)
    if not isinstance(n_hospitals, (int, np.integer)) or isinstance(n_hospitals, bool):
        raise TypeError(f"n_hospitals must be an int, got {n_hospitals!r}.")
    if n_hospitals < 1:
        raise ValueError(f"n_hospitals must be at least 1, got {n_hospitals}.")
    return labels, groups


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"alpha must be a number, got {alpha!r}.")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(
            f"alpha must be a positive finite number, got {alpha}; small values "
            "(0.1) give strong skew, large values (100) almost none."
        )
    return float(alpha)


def _check_enough_groups(n_groups: int, n_hospitals: int) -> None:
    if n_groups < n_hospitals:
        raise ValueError(
            f"Cannot give each of {n_hospitals} hospitals an image: there are only "
            f"{n_groups} lesions (groups). Lower n_hospitals."
        )


def _groups(
    labels: np.ndarray, group_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index images by group and give each group one class.

    Returns the group index per image, the class index per group, the image count
    per group and the image count per class. A group's class is its most frequent
    label, the lowest class index on a tie. Class indices number the distinct
    values of `labels` in sorted order.
    """
    _, label_index = np.unique(labels, return_inverse=True)
    _, group_of_image = np.unique(group_ids, return_inverse=True)
    n_groups = int(group_of_image.max()) + 1
    n_classes = int(label_index.max()) + 1

    per_group = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(per_group, (group_of_image, label_index), 1)
    group_class = per_group.argmax(axis=1)
    group_size = per_group.sum(axis=1)
    class_count = np.bincount(group_class, weights=group_size, minlength=n_classes)
    return group_of_image, group_class, group_size, class_count.astype(np.int64)


def _first_max(primary: np.ndarray, secondary: np.ndarray) -> int:
    """Return the index that maximises primary, then secondary, then comes first."""
    best = np.flatnonzero(np.isclose(primary, primary.max(), rtol=0, atol=1e-9))
    return int(best[np.argmax(secondary[best])])


def _fill_empty_sides(group_side: np.ndarray, group_size: np.ndarray) -> None:
    """Move one lesion into every empty side, in place.

    Extreme fractions on tiny data can leave a side without lesions. The lesion
    moved is the smallest one of the side with the most lesions.
    """
    for side in range(len(SPLITS)):
        if np.any(group_side == side):
            continue
        donor = np.argmax(np.bincount(group_side, minlength=len(SPLITS)))
        candidates = np.flatnonzero(group_side == donor)
        moved = candidates[np.argmin(group_size[candidates])]
        group_side[moved] = side


def _cut_by_shares(
    group_class: np.ndarray,
    group_size: np.ndarray,
    shares: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Assign groups class by class so that hospital h gets about shares[c, h].

    The groups of class c, in random order, are laid end to end by image count,
    and the hospitals' shares, in random order, are laid over them. A group goes
    to the hospital whose stretch contains the group's middle image.
    """
    group_hospital = np.empty(group_class.size, dtype=np.int64)
    n_hospitals = shares.shape[1]
    for label, share in enumerate(shares):
        members = rng.permutation(np.flatnonzero(group_class == label))
        if members.size == 0:
            continue
        sizes = group_size[members]
        middles = np.cumsum(sizes) - sizes / 2

        hospital_order = rng.permutation(n_hospitals)
        bounds = np.cumsum(share[hospital_order]) * sizes.sum()
        stretch = np.searchsorted(bounds, middles, side="right")
        group_hospital[members] = hospital_order[np.minimum(stretch, n_hospitals - 1)]
    return group_hospital


def _keep_groups_together(
    assignment: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, int]:
    """Move every group to the hospital holding most of its images.

    Returns the new assignment and the number of groups that had been split.
    """
    _, group_of_image = np.unique(groups, return_inverse=True)
    n_groups = int(group_of_image.max()) + 1
    per_group = np.zeros((n_groups, int(assignment.max()) + 1), dtype=np.int64)
    np.add.at(per_group, (group_of_image, assignment), 1)

    n_split = int(np.sum((per_group > 0).sum(axis=1) > 1))
    return per_group.argmax(axis=1)[group_of_image], n_split


def _hospital_names(n_hospitals: int) -> tuple[str, ...]:
    return tuple(f"hospital {k}" for k in range(n_hospitals))


def _check_train_mask(train_mask: np.ndarray | None, n_images: int) -> np.ndarray:
    if train_mask is None:
        return np.ones(n_images, dtype=bool)
    train_mask = np.asarray(train_mask)
    if train_mask.dtype != bool or train_mask.shape != (n_images,):
        raise ValueError(
            f"train_mask must be a bool array with one entry per image "
            f"({n_images}), got dtype {train_mask.dtype} and shape "
            f"{train_mask.shape}. Pass, for example, split == 'train'."
        )
    if not train_mask.any():
        raise ValueError(
            "train_mask marks no training image, so no hospital could train. "
            "Pass split == 'train' from split_by_lesion."
        )
    return train_mask


def _covers_every_hospital(
    assignment: np.ndarray, n_hospitals: int, train_mask: np.ndarray
) -> bool:
    """Check that every hospital has at least one image marked in train_mask."""
    return np.unique(assignment[train_mask]).size == n_hospitals


def _empty_hospital_error(kind: str, n_hospitals: int, alpha: float) -> ValueError:
    return ValueError(
        f"{kind} with alpha={alpha:g} left at least one of {n_hospitals} "
        f"hospitals without images (or without training images, given "
        f"train_mask) in each of {MAX_DRAWS} draws. Raise alpha or lower "
        "n_hospitals."
    )
