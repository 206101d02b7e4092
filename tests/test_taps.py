"""Feature taps by layer name, by kind, and inside nested functional models."""

import keras
import numpy as np
import pytest

import kerakd
from conftest import IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images
from kerakd.taps import resolve_taps, tap_model


def test_kinds_resolve_in_depth_order():
    model = kerakd.models.get("resnet20", NUM_CLASSES, IMAGE_SHAPE)
    assert resolve_taps(model, "stages") == ["stage1", "stage2", "stage3"]
    assert resolve_taps(model, "blocks") == [f"block{i}" for i in range(1, 10)]
    assert resolve_taps(model, "penultimate") == ["pool"]


def test_tapped_model_shares_weights_and_matches_the_model():
    model = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    tapped = tap_model(model, ["stage2", "stem_relu"])
    assert {id(v) for v in tapped.weights} == {id(v) for v in model.weights}
    images = make_images(2)
    stage2, stem, logits = tapped(images, training=False)
    np.testing.assert_allclose(logits, model(images, training=False), rtol=1e-5)
    np.testing.assert_allclose(
        stage2, keras.Model(model.input, model.get_layer("stage2").output)(images), rtol=1e-5
    )
    assert tuple(stem.shape) == (2, 16, 16, 16)


def test_unknown_layer_name_lists_close_matches_and_all_names():
    model = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    with pytest.raises(ValueError) as error:
        resolve_taps(model, ["stage2", "stag3"])
    message = str(error.value)
    assert "'stag3'" in message and "did you mean" in message and "'stage3'" in message
    assert "stem_conv" in message  # the full list of layer names


def test_missing_kind_explains_the_convention():
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="no 'stages' taps.*student_taps"):
        resolve_taps(model, "stages")


def nested_backbone_model():
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    inputs = keras.Input((32, 32, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="head")(x))


def test_layers_of_a_nested_applications_backbone_can_be_tapped():
    model = nested_backbone_model()
    tapped = tap_model(model, ["block_3_expand_relu", "block_13_expand_relu"])
    images = make_images(2, (32, 32, 3))
    f3, f13, logits = tapped(images, training=False)
    assert tuple(f3.shape)[1:3] == (8, 8) and tuple(f13.shape)[1:3] == (2, 2)
    np.testing.assert_allclose(logits, model(images, training=False), rtol=1e-4, atol=1e-5)


def test_distiller_trains_a_nested_student_by_layer_names():
    student = nested_backbone_model()
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, (32, 32, 3))
    distiller = kerakd.Distiller(
        student, "at", teacher,
        student_taps=["block_1_expand_relu", "block_3_expand_relu"],
        teacher_taps=["stage2", "stage3"],
    )
    distiller.compile(keras.optimizers.SGD(0.01))
    logs = distiller.fit(make_dataset(16, 8, (32, 32, 3)), epochs=1, verbose=0).history
    assert np.isfinite(logs["at"][0])
    with pytest.raises(ValueError, match="did you mean"):
        kerakd.Distiller(student, "at", teacher, student_taps=["block_1_expand_rel"])
