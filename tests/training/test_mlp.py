"""The MLP: logits of the right shape, early stopping keeps the best epoch, TorchScript matches eager, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training.mlp import (
    BATCH_SIZE,
    ChurnMLP,
    MatrixDataset,
    batch_loader,
    export_torchscript,
    fit_mlp,
    held_out_loss,
    positive_weight,
    predict_mlp,
    train_mlp,
)
from training.tuning import DEFAULT_PARAMS

PARAMS = DEFAULT_PARAMS["mlp"]


def planted_signal(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 6))
    logit = 1.6 * X[:, 0] - 1.2 * X[:, 1] + 0.6 * X[:, 2] - 1.0
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    X, y = planted_signal(400, seed=3)
    return {"X_train": X[:250], "y_train": y[:250], "X_val": X[250:], "y_val": y[250:]}


def test_forward_maps_rows_to_one_logit_each() -> None:
    model = ChurnMLP(n_features=6, hidden_size=16, n_layers=2, dropout=0.1).eval()

    assert model(torch.zeros(5, 6)).shape == (5,)
    assert model(torch.zeros(1, 6)).shape == (1,)


def test_hidden_blocks_are_linear_batchnorm_relu_dropout() -> None:
    model = ChurnMLP(n_features=6, hidden_size=16, n_layers=2, dropout=0.3)

    kinds = [type(layer) for layer in model.body]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2
    assert model.head.out_features == 1


def test_early_stopping_restores_the_best_epoch(data: dict[str, np.ndarray]) -> None:
    # A large learning rate and no regularisation overfit 250 rows quickly, so the held-out loss turns up.
    params = {**PARAMS, "lr": 0.05, "dropout": 0.0, "weight_decay": 0.0, "hidden_size": 128}
    fit = train_mlp(data["X_train"], data["y_train"], data["X_val"], data["y_val"], params, seed=0, patience=4)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=positive_weight(data["y_train"]))

    assert len(fit.val_losses) < 80, "training should have stopped early"
    assert len(fit.val_losses) == fit.best_epoch + 1 + 4
    assert fit.best_val_loss == min(fit.val_losses)
    assert fit.val_losses[-1] > fit.best_val_loss
    assert held_out_loss(fit.model, loss_fn, MatrixDataset(data["X_val"], data["y_val"])) == pytest.approx(
        fit.best_val_loss, abs=1e-6
    )
    assert not fit.model.training


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_matches_the_eager_model(data: dict[str, np.ndarray], tmp_path: Path) -> None:
    model = fit_mlp(data["X_train"], data["y_train"], PARAMS, seed=0)
    path = tmp_path / "model.pt"
    export_torchscript(model, path)
    loaded = torch.jit.load(str(path))
    inputs = torch.from_numpy(data["X_val"].astype(np.float32))

    with torch.inference_mode():
        eager, scripted = model(inputs), loaded(inputs)
    torch.testing.assert_close(scripted, eager, rtol=0, atol=1e-6)


def test_same_seed_gives_identical_predictions_and_another_seed_does_not(data: dict[str, np.ndarray]) -> None:
    first = predict_mlp(fit_mlp(data["X_train"], data["y_train"], PARAMS, seed=5), data["X_val"])
    second = predict_mlp(fit_mlp(data["X_train"], data["y_train"], PARAMS, seed=5), data["X_val"])
    other = predict_mlp(fit_mlp(data["X_train"], data["y_train"], PARAMS, seed=6), data["X_val"])

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_training_restores_the_callers_torch_settings(data: dict[str, np.ndarray]) -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fit_mlp(data["X_train"], data["y_train"], PARAMS, seed=0)

    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_positives_are_weighted_by_the_class_ratio() -> None:
    assert float(positive_weight(np.array([0, 0, 0, 1]))) == pytest.approx(3.0)


def test_loader_serves_every_row_once_per_epoch_in_batches() -> None:
    n_rows = 2 * BATCH_SIZE + 7
    dataset = MatrixDataset(np.arange(n_rows, dtype=np.float64).reshape(-1, 1), np.zeros(n_rows))
    batches = [features for features, _ in batch_loader(dataset, torch.Generator().manual_seed(0))]

    assert [len(batch) for batch in batches] == [BATCH_SIZE, BATCH_SIZE, 7]
    assert sorted(torch.cat(batches).reshape(-1).tolist()) == list(range(n_rows))


def test_loader_drops_a_trailing_single_row_batchnorm_cannot_train_on() -> None:
    n_rows = BATCH_SIZE + 1
    dataset = MatrixDataset(np.zeros((n_rows, 2)), np.zeros(n_rows))
    sizes = [len(features) for features, _ in batch_loader(dataset, torch.Generator().manual_seed(0))]

    assert sizes == [BATCH_SIZE]
