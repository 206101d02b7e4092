"""Feature taps by layer name, by kind, and inside nested functional models."""

import keras
import numpy as np
import pytest

import kerakd
from reference import IMAGE_SHAPE, NUM_CLASSES, make_dataset, make_images
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


# -- Sequential and subclassed models -----------------------------------------

def sequential_net(name, width, image_shape=IMAGE_SHAPE):
    """A small CNN as a keras.Sequential, its stages named by the zoo's convention."""
    return keras.Sequential([
        keras.Input(image_shape),
        keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_conv"),
        keras.layers.ReLU(name="stage1"),
        keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", name=f"{name}_down"),
        keras.layers.ReLU(name="stage2"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(NUM_CLASSES, name=f"{name}_logits"),
    ], name=name)


def by_hand(model, layer_names, images):
    """Outputs of the named layers, calling the model's layers one by one."""
    outputs, x = {}, images
    for layer in model.layers:
        x = layer(x, training=False)
        outputs[layer.name] = keras.ops.convert_to_numpy(x)
    return [outputs[n] for n in layer_names]


def test_sequential_layers_are_tapped_by_name_and_kind():
    model = sequential_net("seq", 4)
    assert resolve_taps(model, "stages") == ["stage1", "stage2"]
    assert resolve_taps(model, "penultimate") == ["pool"]
    tapped = tap_model(model, ["stage2", "seq_conv"])
    assert {id(v) for v in tapped.weights} == {id(v) for v in model.weights}
    images = make_images(2)
    stage2, conv, logits = tapped(images, training=False)
    expected_stage2, expected_conv, expected_logits = by_hand(
        model, ["stage2", "seq_conv", "seq_logits"], images)
    np.testing.assert_allclose(stage2, expected_stage2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(conv, expected_conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)


def test_a_sequential_nested_in_a_functional_model_is_tapped_inside():
    backbone = keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Conv2D(4, 3, padding="same", name="inner_conv"),
        keras.layers.ReLU(name="inner_relu"),
    ], name="backbone")
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="head")(x))
    assert "inner_relu" in kerakd.taps.all_layer_names(model)
    tapped = tap_model(model, ["inner_relu", "backbone"])
    assert {id(v) for v in tapped.weights} == {id(v) for v in model.weights}
    images = make_images(2)
    relu, whole, logits = tapped(images, training=False)
    expected_conv, expected_relu = by_hand(backbone, ["inner_conv", "inner_relu"], images)
    assert np.abs(expected_conv - expected_relu).max() > 0  # the taps differ
    np.testing.assert_allclose(relu, expected_relu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole, expected_relu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, model(images, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, taps", [
    ("kd", {}),
    ("at", {"student_taps": ["stage1", "stage2"], "teacher_taps": ["t_conv", "stage2"]}),
])
def test_distiller_trains_a_sequential_student_and_teacher(method, taps):
    student, teacher = sequential_net("s", 4), sequential_net("t", 8)
    distiller = kerakd.Distiller(student, method, teacher, **taps)
    distiller.compile(keras.optimizers.SGD(0.01))
    before = [v.numpy().copy() for v in student.trainable_weights]
    logs = distiller.fit(make_dataset(8, 8), epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, student.trainable_weights))
    if method == "at":
        assert np.isfinite(logs["at"][0]) and logs["at"][0] > 0
        images = make_images(4)
        features = distiller.student_features(images)
        np.testing.assert_allclose(
            features["stage2"], by_hand(student, ["stage2"], images)[0], rtol=1e-5, atol=1e-6)


class Sub(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, name="conv")
        self.flatten = keras.layers.Flatten()
        self.logits = keras.layers.Dense(NUM_CLASSES)

    def call(self, x):
        return self.logits(self.flatten(self.conv(x)))


def test_a_subclassed_student_is_refused_with_what_works():
    student = Sub(name="sub")
    student(make_images(1))
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    for method in ("kd", "at"):
        with pytest.raises(ValueError) as error:
            kerakd.Distiller(student, method, teacher)
        message = str(error.value)
        assert "The student 'sub' is a subclassed model (Sub)" in message
        assert "keras.Input(shape)" in message and "keras.Model(inputs, logits)" in message
        assert "inner layers hidden" in message and "(ctkd, dist, dkd, kd, mlkd, none)" in message
    with pytest.raises(ValueError, match="subclassed model"):
        tap_model(student, [])


def test_a_subclassed_model_wrapped_whole_serves_the_logits_only_methods():
    # What the message above offers for kd, dkd and none.
    sub = Sub(name="sub")
    inputs = keras.Input(IMAGE_SHAPE)
    student = keras.Model(inputs, sub(inputs))
    teacher = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    distiller = kerakd.Distiller(student, "kd", teacher)
    distiller.compile(keras.optimizers.SGD(0.01))
    assert np.isfinite(distiller.fit(make_dataset(8, 8), epochs=1, verbose=0).history["kd"][0])
    with pytest.raises(ValueError, match="has no layer named 'conv'"):
        kerakd.Distiller(student, "at", teacher, student_taps=["conv"])


def test_an_unbuilt_sequential_is_refused_with_how_to_build_it():
    model = keras.Sequential([keras.layers.Dense(NUM_CLASSES)], name="lazy")
    expected = "'lazy' is a Sequential model that is not built.*keras.Input"
    with pytest.raises(ValueError, match=expected):
        kerakd.Distiller(model, "none")
