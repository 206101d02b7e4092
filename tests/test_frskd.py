"""FRSKD (docs/methods/frskd.md): the BiFPNc self-teacher, the loss, gradient routing, export."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from reference import IMAGE_SHAPE, NUM_CLASSES, make_images, make_labels, np_at, np_ce, np_kd
from kerakd.blocks.bifpn import FastNormalizedFusion, bifpnc
from kerakd.methods.base import StepData, TapSpec

# -- NumPy re-implementation of docs/methods/frskd.md ----------------------------------


def spec_param_count(channels, num_classes, width=2):
    """BiFPNc's parameters from docs/methods/frskd.md's layer list (a BN holds 4 per channel)."""
    n = len(channels)
    w = [width * c for c in channels]

    def bn(c):
        return 4 * c

    def dcb1x1(a, b):
        return a * b + bn(b)

    def dcb3x3(c):  # two [depthwise3x3 -> conv1x1 -> BN]
        return 2 * (9 * c + c * c + bn(c))

    lateral = sum(dcb1x1(channels[i], w[i]) for i in range(n))
    lateral2 = sum(dcb1x1(channels[i], w[i]) for i in range(1, n))
    top_down = sum(dcb1x1(w[j + 1], w[j]) + dcb3x3(w[j]) + 2 for j in range(n - 1))
    bottom_up = sum(
        dcb1x1(w[i - 1], w[i]) + dcb3x3(w[i]) + (3 if i < n - 1 else 2)
        for i in range(1, n)
    )
    head = w[-1] * num_classes + num_classes
    return lateral + lateral2 + top_down + bottom_up + head


def np_relu(x):
    return np.maximum(x, 0.0)


class NumpyBiFPNc:
    """Inference-mode BiFPNc in NumPy (float64), reading `model`'s weights by
    layer name; the maths follows docs/methods/frskd.md and the authors' `bifpnc.py`."""

    def __init__(self, model):
        self.model = model

    def weights(self, name):
        return [w.numpy().astype("float64") for w in self.model.get_layer(name).weights]

    def conv1x1(self, x, name):
        (kernel,) = self.weights(name)
        return x @ kernel[0, 0]

    def bn(self, x, name):
        gamma, beta, mean, var = self.weights(name)
        return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta

    def depthwise3x3(self, x, name):
        (kernel,) = self.weights(name)  # (3, 3, C, 1)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = x.shape[1:3]
        return sum(
            padded[:, di:di + h, dj:dj + w, :] * kernel[di, dj, :, 0]
            for di in range(3) for dj in range(3)
        )

    def dcb1x1(self, x, name):
        return np_relu(self.bn(self.conv1x1(x, f"{name}_conv"), f"{name}_bn"))

    def dcb3x3(self, x, name):
        for k in (1, 2):
            if k > 1:
                x = np_relu(x)
            x = self.depthwise3x3(x, f"{name}_dw{k}")
            x = self.bn(self.conv1x1(x, f"{name}_pw{k}"), f"{name}_bn{k}")
        return x

    def fuse(self, nodes, name):
        (p,) = self.weights(name)
        w = np_relu(p) / (np_relu(p).sum() + 1e-6)
        return sum(wk * x for wk, x in zip(w, nodes))

    @staticmethod
    def upsample(x):
        return x.repeat(2, axis=1).repeat(2, axis=2)

    @staticmethod
    def maxpool_same(x, k=3, s=2):
        # The reference's MaxPool2dStaticSamePadding: zero padding split as
        # TensorFlow's "SAME" (extra on the bottom/right).
        def pads(n):
            extra = (math.ceil(n / s) - 1) * s - n + k
            return extra // 2, extra - extra // 2

        h, w = x.shape[1:3]
        padded = np.pad(x, ((0, 0), pads(h), pads(w), (0, 0)))
        out = np.empty((len(x), math.ceil(h / s), math.ceil(w / s), x.shape[-1]))
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[:, i, j] = padded[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
        return out

    def __call__(self, feats):
        n = len(feats)
        lat = [self.dcb1x1(f, f"lat{i}") for i, f in enumerate(feats)]
        lat2 = [None] + [self.dcb1x1(feats[i], f"lat2_{i}") for i in range(1, n)]
        td = [None] * n
        td[-1] = lat[-1]
        for j in range(n - 2, -1, -1):
            up = self.dcb1x1(self.upsample(np_relu(td[j + 1])), f"td{j}_up")
            td[j] = self.dcb3x3(self.fuse([lat[j], up], f"td{j}_fusion"), f"td{j}")
        out = [td[0]]
        for i in range(1, n):
            down = self.dcb1x1(self.maxpool_same(np_relu(out[-1])), f"out{i}_down")
            nodes = [lat2[i], np_relu(td[i]), down] if i < n - 1 else [lat2[i], down]
            out.append(self.dcb3x3(self.fuse(nodes, f"out{i}_fusion"), f"out{i}"))
        refined = [np_relu(o) for o in out]
        kernel, bias = self.weights("logits")
        return refined, refined[-1].mean(axis=(1, 2)) @ kernel + bias


# -- helpers ---------------------------------------------------------------

SMALL_PYRAMID = [(4, 8, 8, 3), (4, 4, 4, 5), (4, 2, 2, 6)]
RESNET18_TAPS = [(8, 32, 32, 64), (8, 16, 16, 128), (8, 8, 8, 256), (8, 4, 4, 512)]


def tap_spec(shapes, num_classes=NUM_CLASSES):
    batch, h, w = shapes[0][:3]
    return TapSpec(
        student={"features": shapes},
        teacher={},
        student_logits=(batch, num_classes),
        teacher_logits=None,
        image_shape=(batch, h, w, 3),
    )


def built_method(shapes, num_classes=NUM_CLASSES, **kwargs):
    method = kerakd.methods.get("frskd", **kwargs)
    method.build(tap_spec(shapes, num_classes))
    return method


def randomize(model, seed=0):
    """Gives every BatchNorm non-trivial statistics and every fusion some
    negative raw weights, so the reference comparison exercises them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            layer.beta.assign(rng.normal(0, 0.1, c))
            layer.moving_mean.assign(rng.normal(0, 0.1, c))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
        elif isinstance(layer, FastNormalizedFusion):
            p = rng.uniform(0.2, 2.0, layer.fusion_weights.shape[0])
            p[0] = -0.3
            layer.fusion_weights.assign(p)


def fusion_layers(model):
    return [l for l in model.layers if isinstance(l, FastNormalizedFusion)]


def features_of(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype("float32") for s in shapes]


# -- the self-teacher's architecture ----------------------------------------


def test_resnet18_channel_plan_and_parameter_count():
    model = built_method(RESNET18_TAPS, num_classes=100).self_teacher
    *refined, logits = model.outputs
    assert [tuple(r.shape[1:]) for r in refined] == [
        (32, 32, 128), (16, 16, 256), (8, 8, 512), (4, 4, 1024)
    ]
    assert tuple(logits.shape[1:]) == (100,)
    assert model.count_params() == spec_param_count([64, 128, 256, 512], 100)
    # Fusion nodes: 3 top-down of 2 inputs, 2 middle bottom-up of 3, top of 2.
    assert sorted(l.fusion_weights.shape[0] for l in fusion_layers(model)) == [2, 2, 2, 2, 3, 3]


def test_resnet18_cifar_student_gets_the_spec_self_teacher():
    student = kerakd.models.get("resnet18_cifar", 100, (16, 16, 3))
    distiller = kerakd.Distiller(student, "frskd")
    distiller.build((8, 16, 16, 3))
    model = distiller.method.self_teacher
    assert [r.shape[-1] for r in model.outputs[:-1]] == [128, 256, 512, 1024]
    assert model.count_params() == spec_param_count([64, 128, 256, 512], 100)


def test_wrn_16_2_channel_plan_and_parameter_count():
    student = kerakd.models.get("wrn_16_2", NUM_CLASSES, IMAGE_SHAPE)
    distiller = kerakd.Distiller(student, "frskd")
    distiller.build((8, *IMAGE_SHAPE))
    model = distiller.method.self_teacher
    *refined, logits = model.outputs
    assert [tuple(r.shape[1:]) for r in refined] == [(16, 16, 64), (8, 8, 128), (4, 4, 256)]
    assert tuple(logits.shape[1:]) == (NUM_CLASSES,)
    assert model.count_params() == spec_param_count([32, 64, 128], NUM_CLASSES)


def test_width_sets_the_channel_multiplier():
    model = built_method(SMALL_PYRAMID, width=3).self_teacher
    assert [r.shape[-1] for r in model.outputs[:-1]] == [9, 15, 18]
    assert model.count_params() == spec_param_count([3, 5, 6], NUM_CLASSES, width=3)


def test_all_convolutions_are_bias_free():
    model = built_method(SMALL_PYRAMID).self_teacher
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    depthwise = [l for l in model.layers if isinstance(l, keras.layers.DepthwiseConv2D)]
    assert convs and depthwise
    assert not any(l.use_bias for l in convs + depthwise)


def test_forward_matches_numpy_reference():
    model = built_method(SMALL_PYRAMID).self_teacher
    randomize(model)
    feats = [np_relu(f) for f in features_of(SMALL_PYRAMID)]
    *refined, logits = model(feats, training=False)
    want_refined, want_logits = NumpyBiFPNc(model)(feats)
    for got, want in zip(refined, want_refined):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)


# -- fast normalised fusion ---------------------------------------------------


def test_fusion_weights_are_non_negative_when_raw_weights_are_negative():
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 4, 4)).astype("float32")
    fusion = FastNormalizedFusion()
    fusion.build([s.shape for s in x])
    np.testing.assert_array_equal(fusion.fusion_weights.numpy(), [1.0, 1.0, 1.0])

    fusion.fusion_weights.assign([-1.0, 3.0, 1.0])
    want = np.array([0.0, 3.0, 1.0]) / (4.0 + 1e-6)
    np.testing.assert_allclose(fusion.normalized_weights(), want, rtol=1e-6)
    np.testing.assert_allclose(fusion(list(x)), np.tensordot(want, x, 1), rtol=1e-5, atol=1e-7)

    fusion.fusion_weights.assign([-1.0, -2.0, -0.5])
    np.testing.assert_array_equal(fusion.normalized_weights(), [0.0, 0.0, 0.0])


def test_fusion_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="of one shape"):
        FastNormalizedFusion(name="f").build([(None, 4, 4, 8), (None, 2, 2, 8)])


# -- the loss ----------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True])
def test_each_term_and_the_total_match_numpy(soft):
    method = built_method(SMALL_PYRAMID, self_kd_weight=1.5, self_at_weight=30.0,
                          temperature=3.0)
    randomize(method.self_teacher)
    raw = features_of(SMALL_PYRAMID)  # negative values: the taps are rectified
    rng = np.random.default_rng(1)
    student_logits = rng.normal(size=(4, NUM_CLASSES)).astype("float32") * 2
    labels = rng.integers(0, NUM_CLASSES, 4).astype("int32")
    if soft:  # a MixUp batch: lam * y + (1 - lam) * y[perm]
        one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
        labels = 0.7 * one_hot + 0.3 * one_hot[::-1]
    data = StepData(images=None, labels=labels, student={"features": raw},
                    student_logits=student_logits)
    out = method(data=data, training=False)

    feats = [np_relu(f) for f in raw]
    *refined, z_t = [np.asarray(t) for t in method.self_teacher(feats, training=False)]
    want = {
        "ce": np_ce(student_logits, labels),
        "self_teacher_ce": np_ce(z_t, labels),
        "self_kd": np_kd(student_logits, z_t, 3.0),
        "self_at": sum(np_at(f, r) for f, r in zip(feats, refined)),
    }
    assert set(out.losses) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(out.losses[name], value, rtol=1e-5, err_msg=name)
    assert want["self_at"] > 0 and want["self_kd"] > 0
    np.testing.assert_allclose(out.logits["self_teacher"], z_t, rtol=1e-6)

    total = sum(method.term_weights[n] * float(v) for n, v in out.losses.items())
    np.testing.assert_allclose(
        total,
        want["ce"] + want["self_teacher_ce"] + 1.5 * want["self_kd"] + 30.0 * want["self_at"],
        rtol=1e-5,
    )


# -- gradient routing -------------------------------------------------------


def test_gradients_of_each_term_reach_exactly_the_spec_variables(student):
    distiller = kerakd.Distiller(student, "frskd")
    distiller.build((8, *IMAGE_SHAPE))
    self_teacher = distiller.method.self_teacher.trainable_variables
    head = student.get_layer("logits").trainable_variables
    backbone = [v for v in student.trainable_variables if all(v is not h for h in head)]
    assert self_teacher and backbone and head

    with tf.GradientTape(persistent=True) as tape:
        terms = distiller.compute_loss_terms(make_images(8), make_labels(8), training=True)

    def grads(term, variables):  # a weight > 0 routes the gradient as the term does
        return tape.gradient(terms[term], variables)

    def none(gs):
        return all(g is None for g in gs)

    def all_nonzero(gs):
        return all(g is not None and np.any(g.numpy()) for g in gs)

    # KD and AT teach the classifier only.
    assert none(grads("self_kd", self_teacher))
    assert none(grads("self_at", self_teacher))
    assert all_nonzero(grads("self_kd", head)) and not none(grads("self_kd", backbone))
    assert none(grads("self_at", head)) and not none(grads("self_at", backbone))
    # CE(z_t) trains the whole self-teacher and reaches the backbone.
    assert all_nonzero(grads("self_teacher_ce", self_teacher))
    assert all(g is not None for g in grads("self_teacher_ce", backbone))
    assert none(grads("self_teacher_ce", head))
    # CE(z_c) is the classifier's own.
    assert none(grads("ce", self_teacher)) and all_nonzero(grads("ce", head))


# -- training, export, configuration -----------------------------------------


def soft_label_dataset(n=16, batch_size=8):
    """MixUp-style batches: images and labels mixed with a fixed partner."""
    images, labels = make_images(n), make_labels(n)
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[labels]
    perm = np.roll(np.arange(n), 1)
    lam = 0.6
    mixed = lam * images + (1 - lam) * images[perm]
    targets = lam * one_hot + (1 - lam) * one_hot[perm]
    return tf.data.Dataset.from_tensor_slices((mixed, targets)).batch(batch_size)


def test_fit_with_soft_labels_is_finite_and_keeps_fusion_weights_non_negative(student):
    distiller = kerakd.Distiller(student, "frskd", weight_decay=5e-4)
    distiller.build((8, *IMAGE_SHAPE))
    fusions = fusion_layers(distiller.method.self_teacher)
    # One node starts with a negative raw weight, which training must not revive.
    fusions[0].fusion_weights.assign([-0.5, 1.0])
    before = [f.fusion_weights.numpy().copy() for f in fusions]
    distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    history = distiller.fit(soft_label_dataset(), epochs=1, verbose=0).history

    for name in ("loss", "ce", "self_teacher_ce", "self_kd", "self_at", "self_teacher_accuracy"):
        assert np.isfinite(history[name][-1]), name
    for fusion, b in zip(fusions, before):
        assert not np.array_equal(fusion.fusion_weights.numpy(), b), fusion.name
        w = fusion.normalized_weights().numpy()
        assert np.all(w >= 0) and w.sum() <= 1.0, (fusion.name, w)
    assert fusions[0].fusion_weights.numpy()[0] < 0
    assert fusions[0].normalized_weights().numpy()[0] == 0.0


def test_exported_student_has_no_self_teacher_weights(student, tmp_path):
    distiller = kerakd.Distiller(student, "frskd")
    distiller.build((8, *IMAGE_SHAPE))
    method_ids = {id(v) for v in distiller.method.weights}
    assert method_ids and not method_ids & {id(v) for v in distiller.student.weights}

    path = str(tmp_path / "student.keras")
    distiller.student.save(path)
    loaded = keras.saving.load_model(path)
    plain = kerakd.models.get("resnet8", NUM_CLASSES, IMAGE_SHAPE)
    assert loaded.count_params() == plain.count_params()
    assert [l.name for l in loaded.layers] == [l.name for l in plain.layers]


def test_config_round_trip_and_defaults():
    method = kerakd.methods.get("frskd")
    assert not method.requires_teacher
    assert method.term_weights == {
        "ce": 1.0, "self_teacher_ce": 1.0, "self_kd": 2.0, "self_at": 100.0
    }
    config = method.get_config()
    names = ("self_kd_weight", "self_at_weight", "temperature", "width")
    assert {k: config[k] for k in names} == {
        "self_kd_weight": 2.0, "self_at_weight": 100.0, "temperature": 4.0, "width": 2
    }
    clone = type(method).from_config({**config, "self_kd_weight": 1.0, "self_at_weight": 0.0})
    # FRSKD\F: a zero-weight AT term is neither in the objective nor reported.
    assert "self_at" not in clone.term_weights and clone.term_weights["self_kd"] == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"self_kd_weight": -1.0}, "`self_kd_weight` must be >= 0"),
        ({"self_at_weight": -1.0}, "`self_at_weight` must be >= 0"),
        ({"temperature": 0.0}, "`temperature` must be > 0"),
        ({"width": 0}, "`width` must be > 0"),
        ({"width": 1.5}, "`width` must be a whole number"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kerakd.methods.get("frskd", **kwargs)


@pytest.mark.parametrize(
    "shapes, match",
    [
        ([(4, 8, 8, 3)], "at least two feature maps"),
        ([(4, 8, 8, 3), (4, 8, 8, 5)], "halve the previous one"),
        ([(4, 8, 8, 3), (4, 4, 5)], r"\(B, H, W, C\) feature maps"),
    ],
)
def test_taps_that_are_not_a_pyramid_are_rejected(shapes, match):
    with pytest.raises(ValueError, match=match):
        bifpnc(shapes, NUM_CLASSES)


def test_a_teacher_is_refused(student, teacher):
    with pytest.raises(ValueError, match="do not pass teacher="):
        kerakd.Distiller(student, "frskd", teacher)
