"""Classification metrics, plots and the per-class table of a report."""

from __future__ import annotations

import csv
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as skm

from fmkeras.errors import FmkerasError


def classification_metrics(y_true, probabilities, class_names):
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix.

    Args:
        y_true: array of int. True class indices, or one-hot rows
            ``(n, num_classes)`` (``label_mode="categorical"``).
        probabilities: array of shape ``(n, num_classes)``. Predicted
            probabilities (or logits: only the arg-max is used).
        class_names: list of str. Name of each class index.

    Returns:
        dict with ``accuracy``, ``macro_f1``, ``per_class`` (a list of dicts
        with ``class``, ``precision``, ``recall``, ``f1``, ``support``) and
        ``confusion_matrix`` (a list of lists).

    Example:

    >>> m = classification_metrics([0, 1], [[0.9, 0.1], [0.2, 0.8]], ["a", "b"])
    >>> m["accuracy"], m["macro_f1"]
    (1.0, 1.0)
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise FmkerasError(f"Expected probabilities of shape (n, {len(class_names)}), one column "
                           f"per class name. Received: shape {probabilities.shape}")
    if not len(probabilities):
        raise FmkerasError("Expected at least one prediction. Received: 0 rows of probabilities")
    if y_true.ndim == 2 and y_true.shape[1] == len(class_names) > 1:  # one-hot rows
        y_true = y_true.argmax(axis=-1)
    if y_true.dtype.kind not in "biuf" or (
            y_true.dtype.kind == "f" and not np.array_equal(y_true, np.round(y_true))):
        raise FmkerasError(f"Expected integer class indices (or one-hot rows) as y_true. "
                           f"Received: dtype {y_true.dtype}, e.g. {y_true.ravel()[:3].tolist()}")
    y_true = y_true.astype(int).reshape(-1)
    if len(y_true) != len(probabilities):
        raise FmkerasError(f"Expected one true label per row of probabilities "
                           f"({len(probabilities)}). Received: {len(y_true)} labels")
    outside = y_true[(y_true < 0) | (y_true >= len(class_names))]
    if outside.size:
        raise FmkerasError(f"Expected true labels in [0, {len(class_names)}). Received: "
                           f"{sorted(set(outside.tolist()))[:10]}")
    y_pred = probabilities.argmax(axis=-1)
    labels = np.arange(len(class_names))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    per_class = [
        {"class": str(name), "precision": float(p), "recall": float(r), "f1": float(f),
         "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def per_class_table(per_class):
    """A Markdown table of per-class precision, recall, F1 and support.

    Example:

    >>> print(per_class_table([{"class": "a", "precision": 1.0, "recall": 0.5,
    ...                         "f1": 0.667, "support": 2}]).splitlines()[2])
    | a | 1.000 | 0.500 | 0.667 | 2 |
    """
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for row in per_class:
        lines.append(f"| {row['class']} | {row['precision']:.3f} | {row['recall']:.3f} | "
                     f"{row['f1']:.3f} | {row['support']} |")
    return "\n".join(lines)


def plot_confusion_matrix(matrix, class_names, path=None, title="Confusion matrix"):
    """Draw a confusion matrix with counts in the cells; save it if ``path`` is given.

    Args:
        matrix: 2-D array of counts (rows: true class, columns: predicted).
        class_names: list of str.
        path: optional str. PNG file to write.
        title: str. Figure title.

    Returns:
        The matplotlib ``Figure``.

    Example:

    >>> fig = plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"])
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape != (len(class_names), len(class_names)):
        raise FmkerasError(f"Expected a ({len(class_names)}, {len(class_names)}) matrix, one row "
                           f"and column per class name. Received: shape {matrix.shape}")
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def read_history(path):
    """Read a Keras ``CSVLogger`` file into a dict of metric -> list of floats.

    Example:

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "h.csv")
    >>> with open(p, "w") as f:
    ...     _ = f.write("epoch,loss\\n0,1.5\\n1,0.5\\n")
    >>> read_history(p)["loss"]
    [1.5, 0.5]
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    history = {}
    for row in rows:
        for key, value in row.items():
            if key == "epoch":
                continue
            try:
                history.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                history.setdefault(key, []).append(float("nan"))
    return history


def plot_training_curves(history, path=None):
    """Plot each metric and its ``val_`` twin against the epoch.

    Args:
        history: dict of metric name -> list of values (``History.history``
            or :func:`read_history`), the ``History`` that ``model.fit``
            returns, or the path of a ``history.csv``.
        path: optional str. PNG file to write.

    Returns:
        The matplotlib ``Figure``.

    Example:

    >>> fig = plot_training_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})
    """
    if isinstance(history, (str, os.PathLike)):
        history = read_history(history)
    history = getattr(history, "history", history)  # a keras.callbacks.History
    if not isinstance(history, dict):
        raise FmkerasError(f"Expected a dict of metric -> values, a History from model.fit or "
                           f"a history.csv path. Received: {type(history).__name__}")
    names = [k for k in history if not k.startswith("val_") and k not in ("learning_rate", "lr")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 3.5),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig
