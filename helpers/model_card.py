"""Save a trained SkinLesionCNN with its model card, and load both back.

A model card (Mitchell et al. 2019, "Model Cards for Model Reporting") states
what a model saw, how well it does on which data, which privacy guarantee it
carries and where it should not be trusted. `save_model` writes three files
into one folder:

- `model.pt`: the state_dict, written with torch.save;
- `model_card.json`: the card, with the weights' SHA-256 so that `load_model`
  detects a changed or truncated weights file;
- `MODEL_CARD.md`: the same card rendered for people (`render_markdown`).

The folder appears all at once: the files are written into a temporary folder
beside it, which is then renamed, so an error part-way leaves no partial model.

A card is a dict with these fields (`REQUIRED_FIELDS`):

- `dataset`: the data set's name, for example "HAM10000" or "synthetic";
- `sites`: the names of the sites whose images trained the model;
- `image_side`: the images' side in pixels;
- `architecture`: SkinLesionCNN's settings n_classes, width, side and groups;
- `metrics`: {"overall": metrics, "per_site": {site: metrics}}, where each
  metrics dict is `card_metrics(classification_metrics(...))`, which contains the
  per-class recall;
- `privacy`: a list of guarantees {"unit", "epsilon", "delta"}, with the unit
  one of PRIVACY_UNITS, empty when the model has no DP guarantee. A guarantee
  may carry more keys, such as "group_size" or "accountant";
- `training`: the training settings, any JSON-serialisable dict;
- `known_limits`: at least one sentence on where the model fails or was not
  tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.models import SkinLesionCNN

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CARD_FILE = "model_card.json"
MARKDOWN_FILE = "MODEL_CARD.md"
PRIVACY_UNITS = ("image", "lesion (group privacy)", "hospital")
REQUIRED_FIELDS = (
    "dataset",
    "sites",
    "image_side",
    "architecture",
    "metrics",
    "privacy",
    "training",
    "known_limits",
)
ARCHITECTURE_FIELDS = ("n_classes", "width", "side", "groups")
# Fields that save_model writes itself, replacing the card's own values.
_WRITTEN_FIELDS = ("format_version", "weights_sha256")


class ModelCardError(ValueError):
    """A model card that is missing a field or contains an invalid value."""


def card_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Convert `classification_metrics` output into plain JSON values.

    The confusion matrix becomes nested lists, NumPy scalars become Python
    numbers and dict keys become strings (JSON's only key type), so the dict
    survives a JSON round trip unchanged.
    """
    return {key: _plain(value) for key, value in metrics.items()}


def validate_card(card: Mapping[str, Any]) -> None:
    """Check a model card's fields and values.

    Raises:
        ModelCardError: naming the first missing or invalid field, what it
            should be and what it was.
    """
    if not isinstance(card, Mapping):
        raise ModelCardError(f"The card must be a dict, got {type(card).__name__}.")
    missing = [name for name in REQUIRED_FIELDS if name not in card]
    if missing:
        raise ModelCardError(
            f"The card is missing the fields {missing}; every card needs "
            f"{list(REQUIRED_FIELDS)}."
        )

    if not isinstance(card["dataset"], str) or not card["dataset"].strip():
        raise ModelCardError(
            f"dataset must be the data set's name, got {card['dataset']!r}."
        )
    _check_sites(card["sites"])
    _check_architecture(card["architecture"], card["image_side"])
    _check_metrics(card["metrics"])
    for index, guarantee in enumerate(_as_list(card["privacy"], "privacy")):
        _check_guarantee(guarantee, index)
    if not isinstance(card["training"], Mapping):
        raise ModelCardError(
            "training must be a dict of settings, got "
            f"{type(card['training']).__name__}."
        )
    _check_limits(card["known_limits"])
    try:
        json.dumps(dict(card), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ModelCardError(
            f"The card must contain only JSON values (no NaN, arrays or tensors); "
            f"{error}. Convert metrics with card_metrics."
        ) from error


def render_markdown(card: Mapping[str, Any]) -> str:
    """Render a validated card as a Markdown page for people to read."""
    architecture = card["architecture"]
    overall = card["metrics"]["overall"]
    lines = [
        "# Model card: SkinLesionCNN",
        "",
        "## Data",
        "",
        f"- Data set: {card['dataset']}",
        f"- Sites seen in training: {', '.join(card['sites'])}",
        f"- Image side: {card['image_side']} px",
        "",
        "## Architecture",
        "",
        *(f"- {name}: {architecture[name]}" for name in ARCHITECTURE_FIELDS),
        "",
        "## Privacy",
        "",
        *_privacy_lines(card["privacy"]),
        "",
        "## Metrics",
        "",
        f"Overall balanced accuracy: {_number(overall.get('balanced_accuracy'))}",
        f"(melanoma sensitivity {_number(overall.get('melanoma_sensitivity'))}, "
        f"melanoma AUC {_number(overall.get('melanoma_auc'))}, "
        f"{overall.get('n', '?')} images).",
        "",
        "| Class | Recall |",
        "|---|---|",
        *(
            f"| {name} | {_number(recall)} |"
            for name, recall in overall["per_class_recall"].items()
        ),
        "",
        "| Site | Balanced accuracy | Melanoma sensitivity | Images |",
        "|---|---|---|---|",
        *(
            f"| {site} | {_number(metrics.get('balanced_accuracy'))} | "
            f"{_number(metrics.get('melanoma_sensitivity'))} | "
            f"{metrics.get('n', '?')} |"
            for site, metrics in card["metrics"]["per_site"].items()
        ),
        "",
        "## Training",
        "",
        *(f"- {name}: {json.dumps(value)}" for name, value in card["training"].items()),
        "",
        "## Known limits",
        "",
        *(f"- {limit}" for limit in card["known_limits"]),
        "",
    ]
    return "\n".join(lines)


def save_model(path: str | os.PathLike, model: SkinLesionCNN, *, card: dict) -> Path:
    """Write a model's weights and card into the folder `path`, atomically.

    The card's architecture must match the model's settings. save_model adds
    `format_version` and `weights_sha256` to the card it writes, replacing any
    values the card contains, so a loaded card can be saved again. An existing
    folder is replaced only if it contains a saved model (a `model_card.json`), so
    a wrong path cannot delete unrelated files.

    Returns:
        the folder's path.

    Raises:
        ModelCardError: on an invalid card or one whose architecture differs
            from the model's.
        TypeError: if the model is not a SkinLesionCNN.
        FileExistsError: if `path` exists and is not a saved model's folder.
    """
    if not isinstance(model, SkinLesionCNN):
        raise TypeError(
            f"save_model saves a SkinLesionCNN, got {type(model).__name__}; the card "
            "can rebuild only that architecture."
        )
    validate_card(card)
    actual = architecture_of(model)
    if dict(card["architecture"]) != actual:
        raise ModelCardError(
            f"The card's architecture {dict(card['architecture'])} differs from the "
            f"model's {actual}; describe the model that is saved."
        )
    target = Path(path)
    if target.exists() and not (target / CARD_FILE).is_file():
        raise FileExistsError(
            f"{target} exists and is not a saved model's folder (no {CARD_FILE}); "
            "choose a new path."
        )

    # Serialise everything in memory first, so most errors happen before any
    # file exists.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    described = {
        key: value for key, value in card.items() if key not in _WRITTEN_FIELDS
    }
    full_card = {
        "format_version": FORMAT_VERSION,
        **described,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    files = {
        WEIGHTS_FILE: weights,
        CARD_FILE: (json.dumps(full_card, indent=2, allow_nan=False) + "\n").encode(),
        MARKDOWN_FILE: render_markdown(full_card).encode(),
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, content in files.items():
            _write_file(staging / name, content)
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_model(path: str | os.PathLike) -> tuple[SkinLesionCNN, dict]:
    """Rebuild a saved SkinLesionCNN from its card and load its weights.

    Returns:
        (model in eval mode, card dict including `weights_sha256`).

    Raises:
        FileNotFoundError: if the folder, its card or its weights are missing.
        ModelCardError: if the card is not valid JSON or not a valid card.
        ValueError: if the weights file does not match the card's checksum, is
            not a state_dict, or does not fit the card's architecture.
    """
    folder = Path(path)
    card_path = folder / CARD_FILE
    weights_path = folder / WEIGHTS_FILE
    for required in (card_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} is missing; load_model expects a folder written by "
                "save_model."
            )

    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelCardError(f"{card_path} is not valid JSON: {error}.") from error
    if not isinstance(card, dict):
        raise ModelCardError(f"{card_path} does not contain a JSON object.")
    if card.get("format_version") != FORMAT_VERSION:
        raise ModelCardError(
            f"{card_path} has format_version {card.get('format_version')!r}; this "
            f"version of load_model reads {FORMAT_VERSION}."
        )
    validate_card(card)

    weights = weights_path.read_bytes()
    checksum = hashlib.sha256(weights).hexdigest()
    if checksum != card.get("weights_sha256"):
        raise ValueError(
            f"{weights_path} does not match the card's checksum (SHA-256 "
            f"{checksum[:12]}..., expected {str(card.get('weights_sha256'))[:12]}...): "
            "the file was changed or truncated. Save the model again."
        )
    try:
        state = torch.load(io.BytesIO(weights), weights_only=True)
    except Exception as error:  # torch raises several types for unreadable files.
        raise ValueError(
            f"{weights_path} cannot be read as weights: {error}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(
            f"{weights_path} contains a {type(state).__name__}, expected a state_dict."
        )

    # The seed keeps torch's global random state untouched; the weights are
    # replaced right after.
    model = SkinLesionCNN(**card["architecture"], seed=0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"The weights in {weights_path} do not fit the card's architecture "
            f"{card['architecture']}: {error}"
        ) from error
    model.eval()
    return model, card


def architecture_of(model: SkinLesionCNN) -> dict[str, int]:
    """Return the settings that rebuild `model`: n_classes, width, side, groups."""
    return {name: getattr(model, name) for name in ARCHITECTURE_FIELDS}


def _write_file(path: Path, content: bytes) -> None:
    with open(path, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def _replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, keeping the old `target` until that succeeds."""
    if not target.exists():
        os.replace(staging, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    backup.rmdir()
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _check_sites(sites: Any) -> None:
    sites = _as_list(sites, "sites")
    if not sites or not all(isinstance(site, str) and site for site in sites):
        raise ModelCardError(
            f"sites must be a non-empty list of site names, got {sites!r}."
        )
    if len(set(sites)) != len(sites):
        raise ModelCardError(f"sites must not repeat a name, got {sites!r}.")


def _check_architecture(architecture: Any, image_side: Any) -> None:
    if not isinstance(architecture, Mapping):
        raise ModelCardError(
            f"architecture must be a dict with {list(ARCHITECTURE_FIELDS)}, got "
            f"{architecture!r}."
        )
    missing = [name for name in ARCHITECTURE_FIELDS if name not in architecture]
    extra = sorted(set(architecture) - set(ARCHITECTURE_FIELDS))
    if missing or extra:
        raise ModelCardError(
            f"architecture must have exactly the keys {list(ARCHITECTURE_FIELDS)}; "
            f"missing {missing}, unexpected {extra}."
        )
    for name in ARCHITECTURE_FIELDS:
        value = architecture[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelCardError(
                f"architecture[{name!r}] must be an int, got {value!r}."
            )
    if isinstance(image_side, bool) or not isinstance(image_side, int):
        raise ModelCardError(f"image_side must be an int, got {image_side!r}.")
    if image_side != architecture["side"]:
        raise ModelCardError(
            f"image_side {image_side} differs from the architecture's side "
            f"{architecture['side']}; the model reads images of its own side only."
        )
    try:
        SkinLesionCNN(**architecture, seed=0)
    except (TypeError, ValueError) as error:
        raise ModelCardError(f"architecture cannot build the model: {error}") from error


def _check_metrics(metrics: Any) -> None:
    if not isinstance(metrics, Mapping) or set(metrics) != {"overall", "per_site"}:
        raise ModelCardError(
            'metrics must be a dict with exactly the keys "overall" and "per_site", '
            f"got {metrics!r:.200}."
        )
    _check_metric_set(metrics["overall"], "metrics['overall']")
    if not isinstance(metrics["per_site"], Mapping):
        raise ModelCardError(
            "metrics['per_site'] must map site names to metrics, got "
            f"{type(metrics['per_site']).__name__}."
        )
    for site, site_metrics in metrics["per_site"].items():
        _check_metric_set(site_metrics, f"metrics['per_site'][{site!r}]")


def _check_metric_set(metrics: Any, where: str) -> None:
    if not isinstance(metrics, Mapping):
        raise ModelCardError(f"{where} must be a dict of metrics, got {metrics!r}.")
    for name in ("balanced_accuracy", "per_class_recall"):
        if name not in metrics:
            raise ModelCardError(
                f"{where} is missing {name!r}; build it with "
                "card_metrics(classification_metrics(...))."
            )
    accuracy = metrics["balanced_accuracy"]
    if not isinstance(accuracy, int | float) or not 0 <= accuracy <= 1:
        raise ModelCardError(
            f"{where}['balanced_accuracy'] must be a number in [0, 1], got "
            f"{accuracy!r}."
        )
    if not isinstance(metrics["per_class_recall"], Mapping):
        raise ModelCardError(f"{where}['per_class_recall'] must map classes to recall.")


def _check_guarantee(guarantee: Any, index: int) -> None:
    where = f"privacy[{index}]"
    if not isinstance(guarantee, Mapping):
        raise ModelCardError(
            f'{where} must be a dict {{"unit", "epsilon", "delta"}}, got {guarantee!r}.'
        )
    missing = [name for name in ("unit", "epsilon", "delta") if name not in guarantee]
    if missing:
        raise ModelCardError(f"{where} is missing {missing}.")
    if guarantee["unit"] not in PRIVACY_UNITS:
        raise ModelCardError(
            f"{where}['unit'] must be one of {list(PRIVACY_UNITS)}, got "
            f"{guarantee['unit']!r}. A model without a guarantee has privacy []."
        )
    epsilon, delta = guarantee["epsilon"], guarantee["delta"]
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float)
        or not math.isfinite(epsilon)
        or epsilon <= 0
    ):
        raise ModelCardError(
            f"{where}['epsilon'] must be a finite number > 0, got {epsilon!r}."
        )
    if (
        isinstance(delta, bool)
        or not isinstance(delta, int | float)
        or not 0 < delta < 1
    ):
        raise ModelCardError(f"{where}['delta'] must lie in (0, 1), got {delta!r}.")


def _check_limits(limits: Any) -> None:
    limits = _as_list(limits, "known_limits")
    if not limits or not all(isinstance(item, str) and item.strip() for item in limits):
        raise ModelCardError(
            "known_limits must be a non-empty list of sentences: every model has "
            f"limits a user must know. Got {limits!r}."
        )


def _as_list(value: Any, name: str) -> list:
    if not isinstance(value, list | tuple):
        raise ModelCardError(f"{name} must be a list, got {type(value).__name__}.")
    return list(value)


def _privacy_lines(privacy: list) -> list[str]:
    if not privacy:
        return ["No differential-privacy guarantee: privacy unit none."]
    lines = []
    for guarantee in privacy:
        extras = ", ".join(
            f"{key} {value}"
            for key, value in guarantee.items()
            if key not in ("unit", "epsilon", "delta")
        )
        line = (
            f"- ({guarantee['epsilon']:.3g}, {guarantee['delta']:.3g})-DP per "
            f"{guarantee['unit']}"
        )
        lines.append(f"{line} ({extras})" if extras else line)
    return lines


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
