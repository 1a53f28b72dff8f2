"""Tests for saving a model with its model card and loading both back."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from helpers import model_card
from helpers.classes import CLASSES
from helpers.datasets import images_to_tensor
from helpers.metrics import classification_metrics
from helpers.model_card import (
    CARD_FILE,
    MARKDOWN_FILE,
    WEIGHTS_FILE,
    ModelCardError,
    architecture_of,
    card_metrics,
    load_model,
    render_markdown,
    save_model,
    validate_card,
)
from helpers.models import SkinLesionCNN, predict_proba

SIDE = 8
SITES = ("clinic_a", "clinic_b")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_images(n, *, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    images = rng.integers(0, 256, size=(n, SIDE, SIDE, 3)).astype(np.uint8)
    return images_to_tensor(images), labels


def tiny_model(*, seed=0, steps=5):
    model = SkinLesionCNN(width=4, groups=2, side=SIDE, seed=seed)
    x, y = tiny_images(32, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
    return model


def site_data():
    return {site: tiny_images(24, seed=10 + i) for i, site in enumerate(SITES)}


def metrics_of(model, data):
    per_site = {
        site: card_metrics(classification_metrics(y, predict_proba(model, x)))
        for site, (x, y) in data.items()
    }
    x_all = torch.cat([x for x, _ in data.values()])
    y_all = np.concatenate([y for _, y in data.values()])
    overall = card_metrics(classification_metrics(y_all, predict_proba(model, x_all)))
    return {"overall": overall, "per_site": per_site}


def make_card(model, data):
    return {
        "dataset": "synthetic",
        "sites": list(SITES),
        "image_side": SIDE,
        "architecture": architecture_of(model),
        "metrics": metrics_of(model, data),
        "privacy": [
            {"unit": "image", "epsilon": 8.0, "delta": 1e-5, "accountant": "rdp"},
            {
                "unit": "lesion (group privacy)",
                "epsilon": 21.5,
                "delta": 3e-4,
                "group_size": 3,
            },
        ],
        "training": {"rounds": 1, "lr": 0.1, "local_epochs": 1},
        "known_limits": ["Trained on random images; it predicts nothing real."],
    }


@pytest.fixture(scope="module")
def trained():
    model = tiny_model()
    data = site_data()
    return model, data, make_card(model, data)


def test_round_trip_reproduces_predictions_and_metrics(tmp_path, trained):
    model, data, card = trained

    folder = save_model(tmp_path / "model", model, card=card)
    loaded, loaded_card = load_model(folder)

    assert folder == tmp_path / "model"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CARD_FILE, MARKDOWN_FILE, WEIGHTS_FILE]
    )
    assert not loaded.training
    for x, _ in data.values():
        assert np.array_equal(predict_proba(loaded, x), predict_proba(model, x))
    assert metrics_of(loaded, data) == loaded_card["metrics"]
    assert loaded_card["metrics"] == card["metrics"]
    assert loaded_card["privacy"] == card["privacy"]
    assert loaded_card["format_version"] == model_card.FORMAT_VERSION
    assert len(loaded_card["weights_sha256"]) == 64


def test_markdown_lists_the_card(tmp_path, trained):
    model, _, card = trained

    folder = save_model(tmp_path / "model", model, card=card)
    text = (folder / MARKDOWN_FILE).read_text()

    assert "Sites seen in training: clinic_a, clinic_b" in text
    assert "(8, 1e-05)-DP per image (accountant rdp)" in text
    assert "per lesion (group privacy) (group_size 3)" in text
    assert "| clinic_b |" in text
    assert "| mel |" in text
    assert "Trained on random images" in text


def test_markdown_without_guarantee(trained):
    _, _, card = trained
    text = render_markdown({**card, "privacy": []})

    assert "No differential-privacy guarantee: privacy unit none." in text


def test_saving_again_replaces_model(tmp_path, trained):
    model, data, card = trained
    other = tiny_model(seed=3)
    folder = tmp_path / "model"

    save_model(folder, model, card=card)
    _, first_card = load_model(folder)
    save_model(folder, other, card=first_card)
    loaded, second_card = load_model(folder)

    x, _ = data["clinic_a"]
    assert np.array_equal(predict_proba(loaded, x), predict_proba(other, x))
    assert second_card["weights_sha256"] != first_card["weights_sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def bad_cards():
    def change(path, value):
        def mutate(card):
            target = card
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return mutate

    def drop(key):
        return lambda card: card.pop(key)

    return [
        ("missing field", drop("known_limits"), "missing the fields"),
        ("epsilon zero", change(("privacy", 0, "epsilon"), 0.0), "epsilon"),
        ("epsilon negative", change(("privacy", 0, "epsilon"), -1.0), "epsilon"),
        ("epsilon infinite", change(("privacy", 0, "epsilon"), float("inf")), "finite"),
        ("delta one", change(("privacy", 0, "delta"), 1.0), r"\(0, 1\)"),
        ("delta zero", change(("privacy", 1, "delta"), 0.0), r"\(0, 1\)"),
        ("delta missing", lambda card: card["privacy"][0].pop("delta"), "missing"),
        ("unknown unit", change(("privacy", 0, "unit"), "patient"), "unit"),
        ("unit none string", change(("privacy", 0, "unit"), "none"), "privacy \\[\\]"),
        ("privacy not list", change(("privacy",), None), "privacy must be a list"),
        ("no sites", change(("sites",), []), "sites"),
        ("repeated site", change(("sites",), ["a", "a"]), "repeat"),
        ("empty dataset", change(("dataset",), " "), "dataset"),
        ("side mismatch", change(("image_side",), 28), "image_side"),
        ("architecture key", lambda card: card["architecture"].pop("groups"), "groups"),
        ("bad groups", change(("architecture", "groups"), 3), "cannot build"),
        ("no limits", change(("known_limits",), []), "known_limits"),
        ("blank limit", change(("known_limits",), [""]), "known_limits"),
        ("training not dict", change(("training",), [1]), "training"),
        ("no per site", lambda card: card["metrics"].pop("per_site"), "per_site"),
        (
            "accuracy above one",
            change(("metrics", "overall", "balanced_accuracy"), 1.5),
            r"\[0, 1\]",
        ),
        (
            "array in metrics",
            change(("metrics", "overall", "confusion_matrix"), np.eye(2)),
            "JSON",
        ),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [(mutate, message) for _, mutate, message in bad_cards()],
    ids=[name for name, _, _ in bad_cards()],
)
def test_invalid_card_is_rejected(tmp_path, trained, mutate, message):
    model, _, card = trained
    card = copy.deepcopy(card)
    mutate(card)

    with pytest.raises(ModelCardError, match=message):
        validate_card(card)
    with pytest.raises(ModelCardError, match=message):
        save_model(tmp_path / "model", model, card=card)
    assert list(tmp_path.iterdir()) == []


def test_valid_card_without_guarantee_passes(trained):
    _, _, card = trained
    validate_card({**card, "privacy": []})


def test_save_rejects_architecture_mismatch(tmp_path, trained):
    _, _, card = trained
    wider = SkinLesionCNN(width=8, groups=2, side=SIDE, seed=0)

    with pytest.raises(ModelCardError, match="differs from the model's"):
        save_model(tmp_path / "model", wider, card=card)
    with pytest.raises(TypeError, match="SkinLesionCNN"):
        save_model(tmp_path / "model", torch.nn.Linear(2, 2), card=card)


def test_save_refuses_foreign_folder(tmp_path, trained):
    model, _, card = trained
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("unrelated")

    with pytest.raises(FileExistsError, match="not a saved model"):
        save_model(folder, model, card=card)
    assert (folder / "keep.txt").read_text() == "unrelated"


def failing_writer(monkeypatch, *, fail_at):
    original = model_card._write_file
    calls = []

    def write(path, content):
        calls.append(path.name)
        if len(calls) == fail_at:
            original(path, content[: len(content) // 2])
            raise OSError("disk full")
        original(path, content)

    monkeypatch.setattr(model_card, "_write_file", write)
    return calls


def test_error_mid_save_leaves_no_files(tmp_path, trained, monkeypatch):
    model, _, card = trained
    calls = failing_writer(monkeypatch, fail_at=2)

    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "model", model, card=card)

    assert calls == [WEIGHTS_FILE, CARD_FILE]
    assert list(tmp_path.iterdir()) == []


def test_error_mid_overwrite_keeps_old_model(tmp_path, trained, monkeypatch):
    model, data, card = trained
    folder = save_model(tmp_path / "model", model, card=card)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    failing_writer(monkeypatch, fail_at=3)

    with pytest.raises(OSError, match="disk full"):
        save_model(folder, tiny_model(seed=5), card=card)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    loaded, _ = load_model(folder)
    x, _ = data["clinic_b"]
    assert np.array_equal(predict_proba(loaded, x), predict_proba(model, x))


def test_load_missing_files(tmp_path, trained):
    model, _, card = trained

    with pytest.raises(FileNotFoundError, match="model_card.json is missing"):
        load_model(tmp_path / "nowhere")
    folder = save_model(tmp_path / "model", model, card=card)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.pt is missing"):
        load_model(folder)


def test_load_detects_corrupted_weights(tmp_path, trained):
    model, _, card = trained
    folder = save_model(tmp_path / "model", model, card=card)
    weights = folder / WEIGHTS_FILE

    weights.write_bytes(weights.read_bytes()[:-100])

    with pytest.raises(ValueError, match="changed or truncated"):
        load_model(folder)


def test_load_rejects_unreadable_weights(tmp_path, trained):
    model, _, card = trained
    folder = save_model(tmp_path / "model", model, card=card)
    garbage = b"not a torch file"
    (folder / WEIGHTS_FILE).write_bytes(garbage)
    rewrite_card(folder, weights_sha256=model_card.hashlib.sha256(garbage).hexdigest())

    with pytest.raises(ValueError, match="cannot be read as weights"):
        load_model(folder)


def rewrite_card(folder, **changes):
    path = folder / CARD_FILE
    saved = json.loads(path.read_text())
    saved.update(changes)
    path.write_text(json.dumps(saved))


def test_load_rejects_architecture_mismatch(tmp_path, trained):
    model, _, card = trained
    folder = save_model(tmp_path / "model", model, card=card)
    rewrite_card(folder, architecture={**card["architecture"], "width": 8})

    with pytest.raises(ValueError, match="do not fit the card's architecture"):
        load_model(folder)


def test_load_rejects_broken_card(tmp_path, trained):
    model, _, card = trained
    folder = save_model(tmp_path / "model", model, card=card)
    card_path = folder / CARD_FILE
    text = card_path.read_text()

    card_path.write_text(text[: len(text) // 2])
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model(folder)
    card_path.write_text(text)
    rewrite_card(folder, format_version=99)
    with pytest.raises(ModelCardError, match="format_version 99"):
        load_model(folder)
    card_path.write_text(text)
    rewrite_card(folder, privacy=[{"unit": "image", "epsilon": 8.0, "delta": 2.0}])
    with pytest.raises(ModelCardError, match="delta"):
        load_model(folder)


def test_card_metrics_are_plain_json():
    y_true = np.array([0, 1, 1, 2])
    y_prob = np.eye(3)[[0, 1, 2, 2]]

    plain = card_metrics(classification_metrics(y_true, y_prob, n_classes=3))

    assert plain["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert plain["per_class_recall"] == {"0": 1.0, "1": 0.5, "2": 1.0}
    assert json.loads(json.dumps(plain)) == plain
    assert type(plain["n"]) is int


def test_architecture_of_model():
    model = SkinLesionCNN(width=8, groups=4, side=12, n_classes=3, seed=0)

    assert architecture_of(model) == {
        "n_classes": 3,
        "width": 8,
        "side": 12,
        "groups": 4,
    }
