"""A small PyTorch multilayer perceptron for the encoded churn matrix.

The network maps float32 ``(n, features)`` to logits ``(n,)``, which is what the serving scorer
(``bundle.scoring.TorchScriptModel``) expects: it applies the sigmoid itself. Training uses
class-weighted binary cross-entropy (``pos_weight`` = negatives / positives, so churners count as
much as stayers in total), AdamW, a plateau learning-rate schedule and early stopping on the loss
of a held-out part of the data, restoring the best epoch's weights. Everything is seeded and uses
deterministic kernels, so the same seed gives the same model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

# Intra-op parallelism gains little on matrices this small, and torch's OpenMP threads spin-wait badly
# when the cores are shared with other jobs.
TRAINING_THREADS = 1
BATCH_SIZE = 128
MAX_EPOCHS = 80
PATIENCE = 8  # epochs without a better held-out loss before training stops
PLATEAU_PATIENCE = 3  # epochs without improvement before the learning rate is halved
EARLY_STOPPING_FRACTION = 0.15  # share of the training rows held out for early stopping
MIN_IMPROVEMENT = 1e-5


class ChurnMLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout blocks, then one linear unit giving the logit."""

    def __init__(self, n_features: int, hidden_size: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(n_layers):
            blocks += [nn.Linear(width, hidden_size), nn.BatchNorm1d(hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


class MatrixDataset(Dataset):
    """Rows of the encoded matrix with their labels; indexable by a whole batch of row indices at once."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        self.y = torch.as_tensor(np.asarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[index], self.y[index]


@dataclass
class MLPFit:
    """A trained network (eval mode, best epoch's weights) and its early-stopping record."""

    model: ChurnMLP
    best_epoch: int
    best_val_loss: float
    val_losses: list[float] = field(default_factory=list)


@contextmanager
def training_environment(seed: int) -> Iterator[torch.Generator]:
    """Seeded, deterministic, single-threaded; the caller's torch settings are restored after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(min(threads, TRAINING_THREADS))
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def batch_loader(dataset: MatrixDataset, generator: torch.Generator) -> DataLoader:
    """Shuffled mini-batches fetched by tensor indexing (one call per batch, not per row)."""
    # BatchNorm cannot train on a batch of one row, so such a trailing batch is dropped.
    drop_last = len(dataset) % BATCH_SIZE == 1
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), BATCH_SIZE, drop_last=drop_last)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def positive_weight(y: np.ndarray) -> torch.Tensor:
    positives = float(np.sum(y == 1))
    negatives = float(len(y) - positives)
    return torch.tensor(negatives / positives if positives else 1.0)


def held_out_loss(model: nn.Module, loss_fn: nn.Module, data: MatrixDataset) -> float:
    model.eval()
    with torch.inference_mode():
        return float(loss_fn(model(data.X), data.y))


def train_epoch(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> None:
    model.train()
    for features, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(features), labels).backward()
        optimizer.step()


def train_mlp(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    params: dict[str, Any],
    *,
    seed: int,
    max_epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
) -> MLPFit:
    """Train with early stopping on ``(X_val, y_val)`` loss and return the best epoch's network."""
    with training_environment(seed) as generator:
        model = ChurnMLP(
            X_train.shape[1], int(params["hidden_size"]), int(params["n_layers"]), float(params["dropout"])
        )
        # One weighting for both losses, so the early-stopping criterion matches what is optimised.
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=positive_weight(y_train))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=PLATEAU_PATIENCE)
        loader = batch_loader(MatrixDataset(X_train, y_train), generator)
        held_out = MatrixDataset(X_val, y_val)
        best_state, best_epoch, best_loss, losses = copy.deepcopy(model.state_dict()), -1, float("inf"), []
        for epoch in range(max_epochs):
            train_epoch(model, loss_fn, optimizer, loader)
            loss = held_out_loss(model, loss_fn, held_out)
            losses.append(loss)
            scheduler.step(loss)
            if loss < best_loss - MIN_IMPROVEMENT:
                best_state, best_epoch, best_loss = copy.deepcopy(model.state_dict()), epoch, loss
            elif epoch - best_epoch >= patience:
                break
        model.load_state_dict(best_state)
        model.eval()
    return MLPFit(model=model, best_epoch=best_epoch, best_val_loss=best_loss, val_losses=losses)


def fit_mlp(X: np.ndarray, y: np.ndarray, params: dict[str, Any], *, seed: int) -> ChurnMLP:
    """Train on ``(X, y)`` alone: a stratified slice of it is held out for early stopping.

    Needing no outside validation rows keeps refits and cross-validation self-contained, and
    leaves the pipeline's validation split untouched for calibration.
    """
    X_fit, X_stop, y_fit, y_stop = train_test_split(
        X, y, test_size=EARLY_STOPPING_FRACTION, stratify=y, random_state=seed
    )
    return train_mlp(X_fit, y_fit, X_stop, y_stop, params, seed=seed).model


def predict_mlp(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Positive-class probabilities, computed exactly as the serving scorer does (float32 in, sigmoid in float64)."""
    model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    return 1.0 / (1.0 + np.exp(-logits.reshape(-1).double().numpy()))


def export_torchscript(model: nn.Module, path: Path) -> None:
    """Save the network as TorchScript (eval mode), the format serving loads without this module."""
    model.eval()
    with warnings.catch_warnings():
        # torch marks TorchScript as deprecated, but it is the artifact format the bundle contract uses.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        scripted = torch.jit.script(model)
        scripted.save(str(path))
