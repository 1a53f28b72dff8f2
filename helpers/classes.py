"""The seven HAM10000 diagnoses in DermaMNIST label order, shared by every module."""

from __future__ import annotations

# Label k of DermaMNIST and of every array in this package is CLASSES[k].
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

MELANOMA_INDEX: int = CLASSES.index("mel")
