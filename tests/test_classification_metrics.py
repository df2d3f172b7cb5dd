"""Classification scores: values on a known case and errors for inputs that do not line up."""

import numpy as np
import pytest

from fmkeras.errors import FmkerasError
from fmkeras.evaluation.classification import classification_metrics


def test_scores_of_a_known_case():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0, 0, 1.0]])
    scores = classification_metrics([0, 1, 2, 2], probabilities, ["a", "b", "c"])
    assert scores["accuracy"] == 0.75
    assert scores["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    by_class = {row["class"]: row for row in scores["per_class"]}
    assert by_class["b"]["precision"] == 0.5 and by_class["c"]["recall"] == 0.5
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    one_hot = classification_metrics(np.eye(3)[[0, 1, 2, 2]], probabilities, ["a", "b", "c"])
    assert one_hot == scores  # label_mode="categorical" labels


@pytest.mark.parametrize("y_true, probabilities, match", [
    ([0, 1, 2], np.eye(3)[:2], r"one true label per row of probabilities \(2\). Received: 3"),
    ([0, 1], np.eye(2), r"shape \(n, 3\), one column per class name. Received: shape \(2, 2\)"),
    ([0, 5], np.eye(3)[:2], r"labels in \[0, 3\). Received: \[5\]"),
    ([0, -1], np.eye(3)[:2], r"Received: \[-1\]"),
    ([0.9, 1.0], np.eye(3)[:2], r"integer class indices .* Received: dtype float64, e.g. \[0.9"),
    (["a", "b"], np.eye(3)[:2], r"integer class indices .* Received: dtype <U1"),
    ([], np.zeros((0, 3)), "at least one prediction. Received: 0 rows"),
])
def test_inputs_that_do_not_line_up_are_refused(y_true, probabilities, match):
    with pytest.raises(FmkerasError, match=match):
        classification_metrics(y_true, probabilities, ["a", "b", "c"])


def test_curves_take_what_fit_returns_or_a_history_file(tmp_path):
    import keras

    from fmkeras.evaluation.classification import plot_training_curves

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(np.zeros((4, 2)), np.zeros(4), epochs=2, verbose=0)
    assert len(plot_training_curves(history).axes) == 1
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.7,0.8\n")
    assert len(plot_training_curves(str(csv)).axes) == 2
    with pytest.raises(FmkerasError, match="a history.csv path. Received: list"):
        plot_training_curves([1.0, 0.5])


def test_confusion_matrix_plot_needs_one_row_and_column_per_class():
    from fmkeras.evaluation.classification import plot_confusion_matrix

    with pytest.raises(FmkerasError, match=r"Expected a \(3, 3\) matrix.*Received: shape \(2, 2\)"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"])
