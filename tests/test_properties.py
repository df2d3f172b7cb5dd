"""Property-based tests (hypothesis): config round trips, UTF-8-safe truncation."""

import dataclasses
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from fmkeras import config as config_lib
from fmkeras.data.text import truncate_text
from fmkeras.tasks.image_classification import ImageClassificationConfig

SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(1, 10_000), lr=st.floats(1e-8, 10.0), flip=st.booleans(),
       path=SAFE_TEXT, filters=st.lists(st.integers(1, 512), min_size=1, max_size=4),
       brightness=st.none() | st.tuples(st.floats(0.1, 1.0), st.floats(1.0, 2.0)))
def test_config_yaml_round_trip(tmp_path_factory, epochs, lr, flip, path, filters, brightness):
    config = ImageClassificationConfig()
    config.train.epochs, config.train.learning_rate = epochs, lr
    config.data.path, config.data.augment.horizontal_flip = path, flip
    config.model.filters = tuple(filters)
    config.data.augment.brightness_range = list(brightness) if brightness else None
    target = tmp_path_factory.mktemp("cfg") / "config.yaml"
    config_lib.save_config(config, target, task="image-classification")
    again = config_lib.load_config(ImageClassificationConfig, str(target))
    assert dataclasses.asdict(again) == dataclasses.asdict(config)


@settings(max_examples=100, deadline=None)
@given(value=st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False))
def test_override_values_parse_back_to_numbers(value):
    key, parsed = config_lib.parse_override(f"train.learning_rate={value!r}")
    assert key == "train.learning_rate" and parsed == value


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60), limit=st.integers(0, 70))
def test_truncation_never_splits_a_character_or_its_accents(text, limit):
    cut, was_cut = truncate_text(text, limit)
    assert text.startswith(cut) and len(cut) <= limit
    assert was_cut == (len(text) > limit)
    cut.encode("utf-8", "surrogatepass")  # whole code points only
    if was_cut and cut:
        assert not unicodedata.combining(text[len(cut)])
