"""Precision policy, seeds, optimizers and schedules."""

import warnings

import keras
import numpy as np
import pytest

from fmkeras.errors import ConfigError
from fmkeras.training import optimizers, precision


def test_auto_precision_is_float32_on_cpu():
    assert precision.resolve_precision("auto") == "float32"


def test_float16_refused_on_cpu_and_bfloat16_allowed():
    with pytest.raises(ConfigError, match="needs a GPU"):
        precision.resolve_precision("mixed_float16")
    assert precision.set_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"


def test_bfloat16_is_judged_emulated_only_from_an_x86_flags_line_without_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Some EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert precision.bf16_emulated(str(info))
    info.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert not precision.bf16_emulated(str(info))
    info.write_text("Features\t: fp asimd bf16\n")  # an ARM CPU: no x86 flags line
    assert not precision.bf16_emulated(str(info))
    assert not precision.bf16_emulated(str(tmp_path / "missing"))


def test_set_precision_warns_where_bfloat16_would_be_emulated(monkeypatch):
    monkeypatch.setattr(precision, "bf16_emulated", lambda: True)
    with pytest.warns(UserWarning, match="emulated there, usually slower than float32. "
                                         "Expected 'float32' on this machine. "
                                         "Received: precision='mixed_bfloat16'"):
        assert precision.set_precision("mixed_bfloat16") == "mixed_bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.set_precision("float32") == "float32"
        monkeypatch.setattr(precision, "bf16_emulated", lambda: False)
        assert precision.set_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_auto_picks_mixed_float16_on_a_tensor_core_gpu(monkeypatch):
    monkeypatch.setattr(precision, "_gpu_compute_capability", lambda: (8, 0))
    assert precision.resolve_precision("auto") == "mixed_float16"
    monkeypatch.setattr(precision, "_gpu_compute_capability", lambda: (6, 1))
    assert precision.resolve_precision("auto") == "float32"


def test_unknown_precision():
    with pytest.raises(ConfigError, match="Received: precision='half'"):
        precision.resolve_precision("half")


def test_seed_makes_initialisation_repeatable():
    def weights():
        precision.set_seed(7)
        layer = keras.layers.Dense(3)
        layer.build((None, 4))
        return layer.kernel.numpy()
    np.testing.assert_array_equal(weights(), weights())


def test_deterministic_seed_turns_determinism_off_again_but_not_the_callers():
    from tensorflow.python.framework import config as tf_config
    precision.set_seed(1, deterministic=True)
    assert tf_config.is_op_determinism_enabled()
    precision.set_seed(1)  # a later fast run in the same process
    assert not tf_config.is_op_determinism_enabled()
    tf_config.enable_op_determinism()  # the caller's own choice stays
    precision.set_seed(1)
    assert tf_config.is_op_determinism_enabled()


def test_cosine_schedule_warms_up_and_decays():
    lr = optimizers.learning_rate_schedule(0.1, "cosine", total_steps=100, warmup_steps=10)
    assert float(lr(0)) == pytest.approx(0.0)
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(100)) == pytest.approx(0.0, abs=1e-6)


def test_onecycle_climbs_then_falls_linearly_and_round_trips(tmp_path):
    lr = optimizers.learning_rate_schedule(1.0, "onecycle", total_steps=100, warmup_steps=25)
    values = [float(lr(step)) for step in (0, 10, 25, 50, 100, 150)]
    assert values == pytest.approx([0.2, 0.52, 1.0, 1 - 0.93 / 3, 0.07, 0.07])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizers.build_optimizer("sgd", lr, momentum=0.85), "mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.momentum == pytest.approx(0.85) and loaded.optimizer.nesterov
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(lr(1)))
    with pytest.raises(ConfigError, match="total_steps=10, warmup_steps=10"):
        optimizers.learning_rate_schedule(1.0, "onecycle", total_steps=10, warmup_steps=10)


def test_warmup_as_long_as_the_run_is_shortened_with_a_warning():
    assert optimizers.warmup_steps_for(7, 2, epochs=3) == 14
    with pytest.warns(UserWarning, match="warming up for 2 epoch"):
        assert optimizers.warmup_steps_for(7, 4, epochs=3, schedule="onecycle") == 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warm-up in a constant schedule: nothing to say
        assert optimizers.warmup_steps_for(7, 4, epochs=3, schedule="constant") == 28
    with pytest.raises(ConfigError, match="Received: -1"):
        optimizers.warmup_steps_for(7, -1, epochs=3)


def test_bad_optimizer_and_schedule():
    with pytest.raises(ConfigError, match="Received: momentum=1.0"):
        optimizers.build_optimizer("sgd", 0.1, momentum=1.0)
    with pytest.raises(ConfigError, match="Received: optimizer='adamm'"):
        optimizers.build_optimizer("adamm", 0.1)
    with pytest.raises(ConfigError, match="Received: schedule='linear'"):
        optimizers.learning_rate_schedule(0.1, "linear")
    with pytest.raises(ConfigError, match="learning_rate"):
        optimizers.learning_rate_schedule(-1.0)


def test_norm_bias_lr_scale_moves_only_batchnorm_offsets_further(tmp_path):
    def step(scale):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.BatchNormalization(), keras.layers.Dense(1)])
        before = [w.numpy() for w in model.trainable_weights]
        model.compile(optimizers.build_optimizer("sgd", 0.01, momentum=0.85,
                                                 weight_decay=1e-3, norm_bias_lr_scale=scale),
                      "mse")
        x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        model.train_on_batch(x, x[:, :1] * 2 + 1)
        moves = [(w.name, w.numpy() - b) for w, b in zip(model.trainable_weights, before)]
        return model, moves

    _, plain = step(1.0)
    model, scaled = step(64.0)
    assert type(model.optimizer) is optimizers.SGD
    assert [name for name, _ in plain].count("beta") == 1
    for (name, move), (_, scaled_move) in zip(plain, scaled):  # one step from one start
        np.testing.assert_allclose(scaled_move, move * (64.0 if name == "beta" else 1.0),
                                   rtol=1e-4, atol=1e-7)
        assert np.abs(move).sum() > 0
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.norm_bias_lr_scale == 64.0 and loaded.optimizer.nesterov
    assert type(optimizers.build_optimizer("sgd", 0.1)) is keras.optimizers.SGD
    with pytest.raises(ConfigError, match="needs optimizer sgd.*optimizer='adam'"):
        optimizers.build_optimizer("adam", 0.1, norm_bias_lr_scale=64.0)
    with pytest.raises(ConfigError, match="norm_bias_lr_scale > 0. Received: 0"):
        optimizers.build_optimizer("sgd", 0.1, norm_bias_lr_scale=0)
    with pytest.raises(ValueError, match="Received: norm_bias_lr_scale='64'"):
        optimizers.SGD(0.1, norm_bias_lr_scale="64")


def _conv_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
        keras.layers.BatchNormalization(scale=False, name="bn"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, name="head")])


def test_orthogonalize_flattens_the_singular_values_and_keeps_the_vectors():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    v, _ = np.linalg.qr(rng.normal(size=(20, 6)))
    spread = np.array([5.0, 2.0, 1.0, 0.5, 0.3, 0.2])  # condition number 25
    g = (u * spread) @ v.T
    for matrix in (g, g.T):  # wide and tall
        out = keras.ops.convert_to_numpy(optimizers.orthogonalize(matrix.astype("float32"), 5))
        assert out.shape == matrix.shape
        s = np.linalg.svd(out, compute_uv=False)
        assert s.min() > 0.5 and s.max() < 1.3
    out = keras.ops.convert_to_numpy(optimizers.orthogonalize(g.astype("float32"), 5))
    # Same singular vectors: u.T @ out @ v is (close to) diagonal and positive.
    core = u.T @ out @ v
    assert np.all(np.diag(core) > 0.5)
    np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=1e-4)


def test_muon_sgd_normalizes_and_orthogonalizes_kernels_and_sgds_the_rest(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 2)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")

    def one_step(optimizer):
        model = _conv_bn_model()
        before = model.get_layer("conv").kernel.numpy()
        model.compile(optimizer, "mse")
        model.train_on_batch(x, y)
        return model, before

    sgd_args = dict(momentum=0.85, nesterov=True, weight_decay=0.01, norm_bias_lr_scale=8.0)
    muon, before = one_step(optimizers.MuonSGD(0.5, muon_scale=0.2, **sgd_args))
    sgd, _ = one_step(optimizers.SGD(0.5, **sgd_args))
    # Everything but the kernel takes exactly the SGD step (decay, 8x offsets included).
    for w, ref in zip(muon.trainable_weights, sgd.trainable_weights):
        if len(w.shape) != 4:
            np.testing.assert_allclose(w.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    rescaled = before * 2.0 / np.linalg.norm(before)  # Frobenius norm sqrt(4 filters)
    step = (rescaled - muon.get_layer("conv").kernel.numpy()) / (0.5 * 0.2)
    s = np.linalg.svd(step.transpose(3, 0, 1, 2).reshape(4, -1), compute_uv=False)
    assert s.min() > 0.3 and s.max() < 1.5  # orthogonal-ish, whatever the gradient's scale
    assert not np.allclose(muon.get_layer("conv").kernel.numpy(), sgd.get_layer("conv").kernel)

    muon.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is optimizers.MuonSGD
    assert (loaded.optimizer.muon_scale, loaded.optimizer.muon_momentum) == (0.2, 0.6)
    assert loaded.optimizer.norm_bias_lr_scale == 8.0


def test_muon_sgd_trains_a_conv_net():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    labels = (x[:, :3].mean((1, 2, 3)) > x[:, 3:].mean((1, 2, 3))).astype("int64")
    model = _conv_bn_model()
    model.compile(optimizers.build_optimizer("muon", 0.3, momentum=0.85, muon_scale=0.3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    first = model.evaluate(x, labels, verbose=0)
    model.fit(x, labels, epochs=10, batch_size=16, verbose=0)
    assert model.evaluate(x, labels, verbose=0) < 0.7 * first
    norm = np.linalg.norm(model.get_layer("conv").kernel.numpy())
    assert abs(norm - 2.0) < 0.5  # held near sqrt(filters), no weight decay needed


def test_muon_sgd_bad_settings_name_what_was_received():
    with pytest.raises(ValueError, match="muon_scale > 0. Received: muon_scale=0"):
        optimizers.MuonSGD(0.1, muon_scale=0)
    with pytest.raises(ValueError, match="muon_momentum=1.0"):
        optimizers.MuonSGD(0.1, muon_momentum=1.0)
    with pytest.raises(ValueError, match="ns_steps=0"):
        optimizers.MuonSGD(0.1, ns_steps=0)
    with pytest.raises(ConfigError, match=r"Expected 0 <= train\.muon_momentum < 1\. "
                                          r"Received: train\.muon_momentum=-0\.5"):
        optimizers.build_optimizer("muon", 0.1, muon_momentum=-0.5)
    optimizer = optimizers.build_optimizer("muon", 0.1, norm_bias_lr_scale=64.0)
    assert optimizer.norm_bias_lr_scale == 64.0 and optimizer.nesterov


def test_best_checkpoint_value_survives_a_restart(tmp_path):
    from fmkeras.training.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    path = str(tmp_path / "best.keras")
    first = BestCheckpoint(path, monitor="loss")
    first.set_model(model)
    first.on_train_begin()
    first.on_epoch_end(0, {"loss": 0.5})
    saved = (tmp_path / "best.keras").stat().st_mtime_ns
    again = BestCheckpoint(path, monitor="loss")
    again.set_model(model)
    again.on_train_begin()
    assert again.best == 0.5
    again.on_epoch_end(1, {"loss": 0.9})  # worse: must not overwrite the better file
    assert (tmp_path / "best.keras").stat().st_mtime_ns == saved


def test_best_checkpoint_takes_a_mode_for_metrics_keras_cannot_infer(tmp_path):
    from fmkeras.training.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "best.keras")
    best = BestCheckpoint(path, monitor="g_score", mode="max")
    best.set_model(model)
    best.on_train_begin()
    best.on_epoch_end(0, {"g_score": 0.5})
    best.on_epoch_end(1, {"g_score": 0.4})
    assert best.best == 0.5
    minimum = BestCheckpoint(path, monitor="g_score", mode="min")  # another mode: fresh
    minimum.set_model(model)
    minimum.on_train_begin()
    minimum.on_epoch_end(0, {"g_score": 0.7})
    assert minimum.best == 0.7
    with pytest.raises(ValueError, match="Received: mode='lower'"):
        BestCheckpoint(path, mode="lower")


def test_loss_scale_guard_stops_when_every_step_is_skipped():
    from fmkeras.training.callbacks import LossScaleGuard, NonFiniteLossError

    def overflowing(y_true, y_pred):
        # Finite loss, non-finite gradient (d sqrt(x)/dx at 0): every step is skipped.
        return keras.ops.mean(keras.ops.sqrt(keras.ops.square(y_pred - y_true) * 0.0))

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.1), loss=overflowing)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        x, y = np.ones((64, 4), "float32"), np.ones((64, 2), "float32")
        with pytest.raises(NonFiniteLossError, match="loss scale collapsed"):
            model.fit(x, y, batch_size=1, epochs=1, verbose=0,
                      callbacks=[LossScaleGuard(min_scale=1.0, check_every=4)])
        assert float(model.optimizer.dynamic_scale.numpy()) < 1.0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_loss_scale_guard_is_silent_without_loss_scaling():
    from fmkeras.training.callbacks import LossScaleGuard

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    history = model.fit(np.ones((8, 4)), np.ones((8, 2)), batch_size=1, epochs=1, verbose=0,
                        callbacks=[LossScaleGuard(check_every=1)])
    assert len(history.history["loss"]) == 1


def test_epoch_tensorboard_writes_epoch_scalars_only(tmp_path):
    import glob

    import tensorflow as tf

    from fmkeras.training.callbacks import EpochTensorBoard

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0,
              callbacks=[EpochTensorBoard(str(tmp_path))])
    tags = []
    for path in glob.glob(str(tmp_path / "train" / "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags += [(v.tag, event.step) for v in event.summary.value]
    assert ("epoch_loss", 0) in tags and ("epoch_loss", 1) in tags
    assert not [tag for tag, _ in tags if tag.startswith("batch_")]


def _lookahead_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1),
                              keras.layers.BatchNormalization()])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def _set_state(model, step, value):
    model.optimizer.iterations.assign(step)
    for variable in model.variables:
        if "float" in variable.dtype:
            variable.assign(np.full(variable.shape, value, "float32"))


def test_lookahead_averages_every_float_variable_with_a_rising_decay():
    from fmkeras.training.callbacks import Lookahead

    model = _lookahead_model()
    model.optimizer.build(model.trainable_variables)
    lookahead = Lookahead(total_steps=10, every=5, decay=0.5, power=1.0)
    lookahead.set_model(model)
    lookahead.on_train_begin()
    _set_state(model, 4, 1.0)
    lookahead.on_train_batch_end(3)  # not due: the weights are left alone
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 1.0
    _set_state(model, 5, 2.0)
    lookahead.on_train_batch_end(4)  # first update: the average starts at the weights
    _set_state(model, 10, 4.0)
    lookahead.on_train_batch_end(9)  # the last step: decay 0.5 * (10 / 10)
    batch_norm = model.layers[1]
    for variable in (model.layers[0].kernel, model.layers[0].bias, batch_norm.gamma,
                     batch_norm.moving_mean, batch_norm.moving_variance):
        np.testing.assert_allclose(variable.numpy(), 2.0 + 0.5 * (4.0 - 2.0))
    _set_state(model, 11, 7.0)
    lookahead.on_train_batch_end(10)  # past the end: left alone
    assert float(model.layers[0].bias.numpy()[0]) == 7.0
    assert int(model.optimizer.iterations) == 11  # the step counter is not averaged


def test_lookahead_updates_when_a_call_covers_several_steps():
    from fmkeras.training.callbacks import Lookahead

    model = _lookahead_model()
    model.optimizer.build(model.trainable_variables)
    lookahead = Lookahead(total_steps=100, every=5, decay=0.5, power=0.0)
    lookahead.set_model(model)
    _set_state(model, 3, 1.0)
    lookahead.on_train_begin()
    _set_state(model, 7, 3.0)  # steps 4-7 in one call (steps_per_execution=4): 5 crossed
    lookahead.on_train_batch_end(0)
    _set_state(model, 9, 5.0)  # 8-9: no multiple of 5
    lookahead.on_train_batch_end(1)
    assert float(model.layers[0].bias.numpy()[0]) == 5.0
    _set_state(model, 11, 5.0)  # 10 crossed: 3 + 0.5 * (5 - 3)
    lookahead.on_train_batch_end(2)
    assert float(model.layers[0].bias.numpy()[0]) == 4.0


def test_lookahead_in_fit_trains_and_matches_under_a_one_device_strategy():
    import tensorflow as tf

    from fmkeras.training.callbacks import Lookahead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = x @ np.array([[1.5], [-2.0]], "float32") + 0.5

    def train(strategy):
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                            callbacks=[Lookahead(total_steps=32, every=5)])
        return model.get_weights(), history.history["loss"]

    weights, losses = train(tf.distribute.get_strategy())
    assert losses[-1] < 0.5 * losses[0]
    mirrored, _ = train(tf.distribute.MirroredStrategy(["/cpu:0"]))
    for a, b in zip(weights, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"total_steps": 0}, "total_steps must be an integer of at least 1. Received: total_steps=0"),
    ({"total_steps": 10, "every": 2.5}, "every must be an integer of at least 1. "
                                        "Received: every=2.5"),
    ({"total_steps": 10, "decay": 1.0}, r"decay must be in \[0, 1\). Received: decay=1.0"),
])
def test_lookahead_bad_settings_name_what_was_received(kwargs, message):
    from fmkeras.training.callbacks import Lookahead

    with pytest.raises(ValueError, match=message):
        Lookahead(**kwargs)


@pytest.fixture
def timed_model(monkeypatch):
    """fmkeras' callbacks module on a fake clock (each perf_counter call: one second
    later, from 0) and a compiled one-layer model."""
    import types

    from fmkeras.training import callbacks

    clock = iter(np.arange(0.0, 100.0, 1.0))
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return callbacks, model


def test_time_budget_stops_fit_at_the_first_batch_past_it_and_counts_batches(timed_model):
    callbacks, model = timed_model
    x, y = np.ones((8, 2)), np.ones((8, 1))
    budget = callbacks.TimeBudget(seconds=2.5)  # started at 0; batches end at 1, 2, 3
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[budget])
    assert (budget.steps, budget.stopped_early, budget.first_step_end) == (3, True, 1.0)
    assert len(history.history["loss"]) == 1  # the epoch in progress ends, no other starts
    roomy = callbacks.TimeBudget(seconds=1000)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0, callbacks=[roomy])
    assert (roomy.steps, roomy.stopped_early) == (12, False)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[roomy])
    assert roomy.steps == 2  # counted afresh in each fit


def test_time_budget_warns_after_the_first_epoch_when_the_epochs_will_not_fit(timed_model):
    callbacks, model = timed_model
    x, y = np.ones((16, 2)), np.ones((16, 1))
    # Batches end at 1-4 and the epoch at 5: 16/3 s an epoch after the first (traced) step,
    # so 5 epochs need about 26 s, and the 10-second budget holds one.
    budget = callbacks.TimeBudget(seconds=10)
    expected = (r"At about 5.33 s an epoch, 5 epochs need about 0.439 min, past the 0.167-min "
                r"time budget: training will stop before the last epoch .* About 1 epoch fit")
    with pytest.warns(UserWarning, match=expected) as caught:
        history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[budget])
    assert len(caught) == 1 and budget.stopped_early
    assert len(history.history["loss"]) == 3  # batches of epoch 2 end at 6-9, then 10 stops


def test_one_time_budget_across_fits_stops_a_later_fit_after_its_first_batch(timed_model):
    callbacks, model = timed_model
    x, y = np.ones((8, 2)), np.ones((8, 1))
    budget = callbacks.TimeBudget(seconds=2.5, per_fit=False)  # batches end at 1, 2, 3
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[budget])  # 2 batches
    assert (budget.steps, budget.stopped_early) == (2, False)
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[budget])
    assert (budget.steps, budget.stopped_early, budget.start) == (3, True, 0.0)
    assert len(history.history["loss"]) == 1
    model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[budget])
    assert budget.steps == 4  # spent: one batch, however many epochs were asked for


def test_lookahead_averages_at_the_batch_where_an_earlier_callback_stops_fit(monkeypatch):
    from fmkeras.training.callbacks import Lookahead

    class StopAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 3:
                self.model.stop_training = True

    applied, kernels = [], []
    real_apply = Lookahead._apply

    def spy(self, decay):
        applied.append(self._step())
        kernels.append(self.model.layers[0].kernel.numpy().copy())
        real_apply(self, decay)

    monkeypatch.setattr(Lookahead, "_apply", spy)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = np.random.default_rng(0).normal(size=(16, 2)), np.ones((16, 1))
    lookahead = Lookahead(total_steps=100, every=2, decay=0.5, power=0.0)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[StopAt(), lookahead])
    assert applied == [2, 3]  # every 2 steps, and at the stopping step
    # Decay 0.5: the stopping step's weights end halfway back to the step-2 average.
    assert not np.allclose(kernels[0], kernels[1])
    assert np.allclose(model.layers[0].kernel.numpy(), (kernels[0] + kernels[1]) / 2)
    applied.clear()
    model.optimizer.iterations.assign(0)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[lookahead])
    assert applied == [2, 4, 6, 8]  # not stopped: only the planned updates


@pytest.mark.parametrize("seconds", [0, -1.0, True, "900", float("nan")])
def test_time_budget_refuses_a_budget_that_is_not_a_positive_number(seconds):
    from fmkeras.training.callbacks import TimeBudget

    with pytest.raises(ValueError, match=rf"number above 0. Received: seconds={seconds!r}"):
        TimeBudget(seconds)


def test_precision_benchmark_times_fast_cnn_at_both_preset_widths_in_both_policies():
    from conftest import load_script

    bench = load_script("benchmarks", "precision.py")
    rows = bench.fast_cnn_rows(batch=4, steps=1)
    assert [(w, p) for w, p, _ in rows] == [
        ((32, 128, 128), "float32"), ((32, 128, 128), "mixed_bfloat16"),
        ((64, 256, 256), "float32"), ((64, 256, 256), "mixed_bfloat16")]
    assert all(0 < seconds < 60 for _, _, seconds in rows)
    assert keras.mixed_precision.global_policy().name == "float32"
