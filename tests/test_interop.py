"""keras.distillation interoperability: its losses in kerakd, kerakd's KD in Keras."""

import keras
import numpy as np
import pytest

import kerakd
from kerakd import interop

from reference import IMAGE_SHAPE, NUM_CLASSES, make_images, make_labels, np_kd


def tiny(seed, width=8):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Dense(width)(x))
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="logits")(x))


def test_kd_loss_inside_keras_distiller_gives_the_conventions_value():
    teacher, student = tiny(1), tiny(2)
    distiller = keras.distillation.Distiller(
        teacher, student, interop.KDLoss(temperature=4.0), student_loss_weight=0.0
    )
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = make_images()
    z_s, z_t = student(x).numpy(), teacher(x).numpy()
    got = distiller.compute_loss(x, make_labels(), y_pred=student(x))
    np.testing.assert_allclose(got, np_kd(z_s, z_t, 4.0), rtol=1e-5)
    # Keras's own default logits loss is a different quantity (docs/interop.md).
    keras_default = keras.distillation.LogitsDistillation(temperature=4.0)
    assert not np.isclose(keras_default.compute_loss(z_t, z_s), np_kd(z_s, z_t, 4.0))


def test_kd_loss_serializes():
    loss = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(interop.KDLoss(temperature=2.0))
    )
    assert isinstance(loss, interop.KDLoss) and loss.temperature == 2.0


def test_feature_distillation_reads_the_named_layers():
    teacher, student = tiny(1), tiny(2)
    method = interop.from_keras(keras.distillation.FeatureDistillation(
        "mse", teacher_layer_name="pool", student_layer_name="pool"
    ))
    assert method.student_taps == {"features": "pool"}
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.build((8, *IMAGE_SHAPE))
    x, y = make_images(), make_labels()
    terms = distiller.compute_loss_terms(x, y)  # weighted: 0.5 * the term
    pool = lambda m: keras.Model(m.inputs, m.get_layer("pool").output)(x).numpy()  # noqa: E731
    np.testing.assert_allclose(
        terms["distill"] / 0.5, np.mean((pool(teacher) - pool(student)) ** 2), rtol=1e-5
    )
    assert method.term_weights == {"ce": 0.5, "distill": 0.5}


def test_kerakd_trains_with_a_keras_distillation_loss():
    teacher, student = tiny(1), tiny(2)
    # A KLDivergence instance takes LogitsDistillation's softmax + T^2 branch.
    loss = keras.distillation.LogitsDistillation(4.0, loss=keras.losses.KLDivergence())
    method = interop.from_keras(loss, ce_weight=0.0, distill_weight=1.0)
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.Adam(0.01))
    x, y = make_images(), make_labels()
    logs = distiller.fit(x, y, batch_size=8, epochs=20, shuffle=False, verbose=0).history
    assert logs["distill"][-1] < 0.5 * logs["distill"][0]


def test_config_round_trip_and_bad_loss():
    method = interop.from_keras(keras.distillation.LogitsDistillation(temperature=2.0))
    again = interop.KerasLoss.from_config(method.get_config())
    assert again.loss.temperature == 2.0 and again.term_weights == method.term_weights
    with pytest.raises(TypeError, match="DistillationLoss"):
        interop.from_keras(keras.losses.MeanSquaredError())
