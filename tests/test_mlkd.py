"""MLKD (multi-level logit distillation) against a float64 NumPy re-implementation of
the authors' code, its confidence masks, the two-view pipeline and RandAugment."""

import numpy as np
import pytest
import tensorflow as tf
from absl import app

import kerakd
from kerakd import train
from kerakd.data import augment, pipeline, rand_augment, sources
from kerakd.methods import mlkd
from kerakd.methods.base import StepData, TapSpec
from reference import np_ce, np_kd, np_log_softmax, np_softmax, np_standardize

B, K = 6, 5
REFERENCE_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def logits(seed, scale=2.0, shape=(B, K)):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype("float32")


S_W, S_S, T_W, T_S = logits(1), logits(2), logits(3, 3.0), logits(4, 3.0)
LABELS = np.array([0, 1, 2, 3, 4, 0], "int32")
STRONG = np.full((B, 4, 4, 3), 7.0, "float32")  # stands for the strong images


# -- NumPy reference -----------------------------------------------------------


def np_kd_rows(s, t, temperature):
    p_t = np_softmax(t, temperature)
    return temperature**2 * (p_t * (np.log(p_t) - np_log_softmax(s, temperature))).sum(1)


def np_cc(s, t, temperature, keep=None):
    p_s, p_t = np_softmax(s, temperature), np_softmax(t, temperature)
    error = (p_t.T @ p_t - p_s.T @ p_s) ** 2
    if keep is None:
        return error.sum() / p_s.shape[1]
    return error[np.ix_(keep, keep)].sum() / keep.sum()


def np_bc(s, t, temperature, keep=None):
    p_s, p_t = np_softmax(s, temperature), np_softmax(t, temperature)
    error = (p_t @ p_t.T - p_s @ p_s.T) ** 2
    if keep is None:
        return error.sum() / p_s.shape[0]
    return error[np.ix_(keep, keep)].sum() / keep.sum()


def np_masks(t_w):
    p = np_softmax(t_w)
    confidence, class_confidence = p.max(1), p.sum(0)
    return (confidence <= np.percentile(confidence, 50),
            class_confidence <= np.percentile(class_confidence, 50))


def np_mlkd(s_w, s_s, t_w, t_s, y, ce_weight=0.1, kd_weight=0.9, t0=4.0, standardize=False,
            cc_weight=None, bc_weight=None):
    """The authors' forward_train with reduce=True masks (scalar factors)."""
    keep_b, keep_k = np_masks(t_w)
    f_b, f_k = keep_b.mean(), keep_k.mean()
    a_w, b_w, a_s, b_s = ((np_standardize(z) for z in (s_w, t_w, s_s, t_s)) if standardize
                          else (s_w, t_w, s_s, t_s))
    temperatures = (t0, 3.0, 5.0, 2.0, 6.0)
    kd = (f_b * sum(np_kd(a_w, b_w, t) for t in temperatures)
          + np_kd(a_s, b_s, t0) + np_kd(a_s, b_s, 3.0) + np_kd(a_s, b_s, 5.0)
          + np_kd(a_w, b_w, 2.0) + np_kd(a_w, b_w, 6.0))
    cc = f_k * sum(np_cc(s_w, t_w, t) for t in temperatures)
    bc = f_b * sum(np_bc(s_w, t_w, t) for t in temperatures)
    terms = {"ce": np_ce(s_w, y), "ce_strong": np_ce(s_s, y), "kd": kd, "cc": cc, "bc": bc}
    cc_weight = kd_weight if cc_weight is None else cc_weight
    bc_weight = kd_weight if bc_weight is None else bc_weight
    total = (ce_weight * (terms["ce"] + terms["ce_strong"]) + kd_weight * kd
             + cc_weight * cc + bc_weight * bc)
    return terms, total


# -- method harness -------------------------------------------------------------

def step(s_w=S_W, s_s=S_S, t_w=T_W, t_s=T_S, labels=LABELS, strong=STRONG):
    def forward(strong_logits):
        def call(images):
            assert images is strong, "the second forward must read the strong view"
            return {}, strong_logits
        return call

    return StepData(images=None, labels=labels, student={}, student_logits=s_w,
                    teacher={}, teacher_logits=t_w, training=True,
                    forward_student=forward(s_s), forward_teacher=forward(t_s),
                    strong_images=strong)


def built(**hparams):
    method = kerakd.methods.get("mlkd", **hparams)
    method.build(TapSpec(student={}, teacher={}, student_logits=(B, K), teacher_logits=(B, K),
                         image_shape=(B, 4, 4, 3)))
    return method


def weighted_total(method, out):
    return sum(float(method.term_weights[n]) * float(v) for n, v in out.losses.items())


# -- terms ------------------------------------------------------------------------

def test_level_terms_at_t4_match_numpy():
    np.testing.assert_allclose(np.mean(mlkd.kd_per_example(S_W, T_W, 4.0)),
                               np_kd(S_W, T_W, 4.0), rtol=1e-5)
    np.testing.assert_allclose(mlkd.class_consistency(S_W, T_W, 4.0), np_cc(S_W, T_W, 4.0),
                               rtol=1e-5)
    np.testing.assert_allclose(mlkd.batch_consistency(S_W, T_W, 4.0), np_bc(S_W, T_W, 4.0),
                               rtol=1e-5)


def test_cc_and_bc_weights_default_to_kd_weight_and_scale_only_their_terms():
    method = built(cc_weight=0.00225, bc_weight=0.5)
    assert method.term_weights == {"ce": 0.1, "ce_strong": 0.1, "kd": 0.9, "cc": 0.00225,
                                   "bc": 0.5}
    out = method(data=step())
    terms, total = np_mlkd(S_W, S_S, T_W, T_S, LABELS, cc_weight=0.00225, bc_weight=0.5)
    np.testing.assert_allclose(weighted_total(method, out), total, rtol=1e-5)
    again = type(method).from_config(method.get_config())
    assert (again.cc_weight, again.bc_weight) == (0.00225, 0.5)
    # Unset, each follows kd_weight, LS's 9 included.
    assert built(logit_standardization=True).term_weights["cc"] == 9.0
    with pytest.raises(ValueError, match="cc_weight"):
        kerakd.methods.get("mlkd", cc_weight=-1.0)


def test_every_term_and_the_total_match_the_reference():
    method = built()
    out = method(data=step())
    terms, total = np_mlkd(S_W, S_S, T_W, T_S, LABELS)
    assert set(out.losses) == set(terms)
    for name, value in terms.items():
        np.testing.assert_allclose(float(out.losses[name]), value, rtol=1e-5, err_msg=name)
    assert method.term_weights == {"ce": 0.1, "ce_strong": 0.1, "kd": 0.9, "cc": 0.9, "bc": 0.9}
    np.testing.assert_allclose(weighted_total(method, out), total, rtol=1e-5)
    # B = 6 distinct confidences keep 3 examples; K = 5 classes keep 3 (the median too).
    assert float(out.metrics["f_B"]) == 0.5 and float(out.metrics["f_K"]) == np.float32(0.6)
    np.testing.assert_allclose(float(out.metrics["teacher_confidence"]),
                               np_softmax(T_W).max(1).mean(), rtol=1e-5)


def test_strong_sum_reads_the_weak_view_at_its_last_two_temperatures():
    # Equal strong-view logits for both networks zero the strong-view KD terms:
    # what remains of the strong sum is KD_2 + KD_6 on the weak view.
    out = built()(data=step(s_s=T_S, t_s=T_S))
    keep_b, _ = np_masks(T_W)
    weak = sum(np_kd(S_W, T_W, t) for t in REFERENCE_TEMPERATURES)
    expected = keep_b.mean() * weak + np_kd(S_W, T_W, 2.0) + np_kd(S_W, T_W, 6.0)
    np.testing.assert_allclose(float(out.losses["kd"]), expected, rtol=1e-5)


def test_per_example_masking_keeps_the_less_confident_rows_and_columns():
    out = built(masking="per_example")(data=step())
    keep_b, keep_k = np_masks(T_W)
    temperatures = REFERENCE_TEMPERATURES
    kd = (sum(np_kd_rows(S_W, T_W, t)[keep_b].mean() for t in temperatures)
          + sum(np_kd(S_S, T_S, t) for t in temperatures[:3])
          + sum(np_kd(S_W, T_W, t) for t in temperatures[3:]))
    np.testing.assert_allclose(float(out.losses["kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(float(out.losses["cc"]),
                               sum(np_cc(S_W, T_W, t, keep_k) for t in temperatures), rtol=1e-5)
    np.testing.assert_allclose(float(out.losses["bc"]),
                               sum(np_bc(S_W, T_W, t, keep_b) for t in temperatures), rtol=1e-5)


def test_custom_temperatures_are_used_in_order():
    temperatures = (1.0, 7.0, 2.5, 3.0, 0.5)
    out = built(temperatures=temperatures)(data=step())
    keep_b, keep_k = np_masks(T_W)
    kd = (keep_b.mean() * sum(np_kd(S_W, T_W, t) for t in temperatures)
          + sum(np_kd(S_S, T_S, t) for t in temperatures[:3])
          + sum(np_kd(S_W, T_W, t) for t in temperatures[3:]))
    np.testing.assert_allclose(float(out.losses["kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(float(out.losses["cc"]), keep_k.mean() * sum(
        np_cc(S_W, T_W, t) for t in temperatures), rtol=1e-5)


def test_class_term_is_k_by_k_over_k_and_batch_term_b_by_b_over_b():
    s, t = logits(5, shape=(6, 4)), logits(6, 3.0, shape=(6, 4))  # B != K
    cc, bc = float(mlkd.class_consistency(s, t, 4.0)), float(mlkd.batch_consistency(s, t, 4.0))
    np.testing.assert_allclose(cc, np_cc(s, t, 4.0), rtol=1e-5)
    np.testing.assert_allclose(bc, np_bc(s, t, 4.0), rtol=1e-5)
    assert abs(cc - bc) > 1e-3 * max(cc, bc)  # the two would agree if swapped
    # A batch given twice doubles the class Grams (error x4, still / K) and
    # tiles the batch Grams four times (error x4, now / 2B).
    s2, t2 = np.concatenate([s, s]), np.concatenate([t, t])
    np.testing.assert_allclose(float(mlkd.class_consistency(s2, t2, 4.0)), 4 * cc, rtol=1e-5)
    np.testing.assert_allclose(float(mlkd.batch_consistency(s2, t2, 4.0)), 2 * bc, rtol=1e-5)


# -- confidence masks -----------------------------------------------------------------

def teacher_with_confidences(confidences, classes=20):
    """Logits whose softmax has maximum `c` per row (the rest spread evenly)."""
    rows = []
    for c in confidences:
        rest = np.full(classes - 1, (1 - c) / (classes - 1))
        rows.append(np.log(np.concatenate([[c], rest])))
    return np.array(rows, "float32")


@pytest.mark.parametrize("confidences, threshold, share", [
    ([0.1, 0.2, 0.3, 0.4], 0.25, 0.5),
    ([0.4, 0.1, 0.3, 0.5, 0.2], 0.3, 0.6),   # the median kept (<=)
])
def test_the_example_threshold_is_numpys_median(confidences, threshold, share):
    np.testing.assert_allclose(float(mlkd.median(np.array(confidences, "float32"))), threshold,
                               rtol=1e-6)
    example_mask, _, confidence = mlkd.confidence_masks(teacher_with_confidences(confidences))
    np.testing.assert_allclose(confidence, confidences, rtol=1e-5)
    assert float(np.mean(example_mask)) == np.float32(share)


def test_median_matches_numpy_percentile_with_ties_and_both_parities():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 8):
        values = rng.integers(0, 4, n).astype("float32")  # many ties
        np.testing.assert_allclose(float(mlkd.median(values)), np.percentile(values, 50))


# -- gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("masking", ["reference", "per_example"])
def test_no_gradient_reaches_the_teacher_or_the_masks(masking):
    method = built(masking=masking)
    s_w, s_s, t_w, t_s = (tf.Variable(z) for z in (S_W, S_S, T_W, T_S))
    with tf.GradientTape(persistent=True) as tape:
        out = method(data=step(s_w, s_s, t_w, t_s))
        total = sum(float(method.term_weights[n]) * v for n, v in out.losses.items())
    assert tape.gradient(total, t_w) is None and tape.gradient(total, t_s) is None
    for student in (s_w, s_s):
        gradient = tape.gradient(total, student)
        assert gradient is not None and np.all(np.isfinite(gradient))
        assert np.abs(gradient).max() > 1e-4
    # The masks (from the teacher) are constants: the masked terms' gradient in
    # s_w is f_B (or f_K) times the unmasked terms' gradient.
    if masking == "reference":
        with tf.GradientTape() as unmasked_tape:
            bc = sum(mlkd.batch_consistency(s_w, T_W, t) for t in REFERENCE_TEMPERATURES)
        np.testing.assert_allclose(tape.gradient(out.losses["bc"], s_w),
                                   0.5 * unmasked_tape.gradient(bc, s_w), rtol=1e-5, atol=1e-8)


# -- logit standardisation ------------------------------------------------------------

def test_logit_standardization_presets_and_terms():
    method = built(logit_standardization=True)
    assert method.kd_weight == 9.0 and method.base_temperature == 2.0
    assert method.used_temperatures == [2.0, 3.0, 5.0, 2.0, 6.0]
    config = method.get_config()
    assert (config["kd_weight"], config["base_temperature"]) == (9.0, 2.0)
    out = method(data=step())
    terms, total = np_mlkd(S_W, S_S, T_W, T_S, LABELS, kd_weight=9.0, t0=2.0, standardize=True)
    for name, value in terms.items():  # cc, bc and the masks read raw logits
        np.testing.assert_allclose(float(out.losses[name]), value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(weighted_total(method, out), total, rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["student_logit_std"]),
                               S_W.astype("float64").std(1, ddof=1).mean(), rtol=1e-5)
    assert "student_logit_std" not in built()(data=step()).metrics


def test_given_values_win_over_the_presets():
    method = kerakd.methods.get("mlkd", logit_standardization=True, kd_weight=6.0,
                                base_temperature=3.0)
    assert (method.kd_weight, method.used_temperatures[0]) == (6.0, 3.0)
    plain = kerakd.methods.get("mlkd")
    assert plain.get_config()["kd_weight"] == 0.9 and plain.get_config()["base_temperature"] == 4.0
    assert kerakd.methods.get("mlkd", base_temperature=1.5).used_temperatures[0] == 1.5


@pytest.mark.parametrize("hparams, message", [
    ({"masking": "rows"}, "`masking`"),
    ({"temperatures": []}, "`temperatures`"),
    ({"temperatures": [4.0, -1.0]}, r"`temperatures\[1\]`"),
    ({"base_temperature": 0.0}, "`base_temperature`"),
    ({"kd_weight": -1.0}, "`kd_weight`"),
])
def test_bad_hyperparameters_are_named(hparams, message):
    with pytest.raises(ValueError, match=message):
        kerakd.methods.get("mlkd", **hparams)


# -- the Distiller --------------------------------------------------------------------

def test_distiller_without_a_strong_view_says_how_to_feed_one():
    student = kerakd.models.get("resnet8", K, (16, 16, 3))
    teacher = kerakd.models.get("wrn_16_1", K, (16, 16, 3))
    distiller = kerakd.Distiller(student, "mlkd", teacher)
    images = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    labels = np.arange(8, dtype="int32") % K
    with pytest.raises(ValueError, match=r"'strong_images'.*views=\('weak', 'strong'\)"):
        distiller.compute_loss_terms(images, labels)
    distiller.compile("sgd")
    with pytest.raises(ValueError, match="two views of each example"):
        distiller.fit(images, labels, batch_size=8, verbose=0)
    # Evaluation reads the weak view alone.
    assert "accuracy" in distiller.evaluate(images, labels, verbose=0, return_dict=True)


# -- the two-view pipeline --------------------------------------------------------------

def constant_source(n=16, shape=(16, 16, 3)):
    """Example i is the constant image 20 + 10 i, label i % 4."""
    values = 20 + 10 * np.arange(n)
    images = np.broadcast_to(values[:, None, None, None], (n, *shape)).astype(np.uint8)
    labels = np.arange(n) % 4
    return sources.ArraySource("synthetic", (images, labels), (images[:4], labels[:4]), 4)


def test_two_views_are_different_tensors_of_the_same_example(monkeypatch):
    monkeypatch.setattr(rand_augment, "AUGMENT_OPS", ("identity",))  # Identity, twice
    source = constant_source()
    x, y = next(iter(pipeline.training_dataset(source, 16, augment="none", with_index=True,
                                               views=("weak", "strong"))))
    assert sorted(x) == ["images", "index", "strong_images"]
    weak, strong, index = x["images"].numpy(), x["strong_images"].numpy(), x["index"].numpy()
    assert weak.shape == strong.shape == (16, 16, 16, 3) and strong.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), index % 4)

    def normalised(value):
        return (np.asarray(value, "float32") / 255 - 0.5) / 0.2

    fill = normalised(rand_augment.CUTOUT_FILL_RGB)
    cutout_seen = 0
    for i, example in enumerate(index):
        own, pad = normalised(20 + 10 * example), normalised(0)
        np.testing.assert_allclose(weak[i], own, rtol=1e-6)  # augment="none": the image
        pixels = strong[i].reshape(-1, 3)
        is_own = np.all(np.isclose(pixels, own), axis=1)
        is_pad = np.all(np.isclose(pixels, pad), axis=1)
        is_fill = np.all(np.isclose(pixels, fill), axis=1)
        assert np.all(is_own | is_pad | is_fill), "the strong view is of the same example"
        assert is_own.any()
        cutout_seen += is_fill.any()
        assert not np.allclose(strong[i], weak[i])  # crops and Cutout differ
    assert cutout_seen >= 12


def test_the_weak_view_is_the_one_view_pipelines_batch():
    source = sources.synthetic(num_train=32)
    (weak_x, weak_y), = pipeline.training_dataset(source, 32, seed=3).take(1)
    (two_x, two_y), = pipeline.training_dataset(source, 32, seed=3,
                                                views=("weak", "strong")).take(1)
    np.testing.assert_array_equal(two_x["images"], weak_x)
    np.testing.assert_array_equal(two_y, weak_y)
    difference = np.abs(two_x["strong_images"].numpy() - weak_x.numpy()).mean(axis=(1, 2, 3))
    assert np.all(difference > 0)


def test_views_are_checked():
    source = sources.synthetic(num_train=32)
    with pytest.raises(ValueError, match="Unknown views"):
        pipeline.training_dataset(source, 8, views=("strong",))
    with pytest.raises(ValueError, match="augment='mixup'"):
        pipeline.training_dataset(source, 8, augment="mixup", views=("weak", "strong"))


def test_the_strong_view_of_grey_images_is_filled_with_grey():
    image = np.zeros((16, 16, 1), np.uint8)
    labels = np.zeros(2, np.int64)
    info = sources.ArraySource("grey", (image[None].repeat(2, 0), labels),
                               (image[None].repeat(2, 0), labels), 2).info
    filled = 0
    for i in range(8):
        pixels = rand_augment.cutout(image, tf.constant([i, 1]))
        filled += int(np.any(pixels.numpy() == rand_augment.CUTOUT_FILL_GREY))
        assert set(np.unique(pixels.numpy())) <= {0.0, 123.0}
    assert filled >= 5
    strong = augment.strong_transform(info)(image, tf.constant([0, 1]))
    assert strong.shape == (16, 16, 1)


# -- RandAugment and Cutout -------------------------------------------------------------

def tiny_image(channels=3, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (8, 8, channels)).astype(np.uint8)
    image[:3] = rng.integers(60, 140, (3, 8, channels))  # some structure, not all noise
    return image


@pytest.mark.parametrize("name", rand_augment.AUGMENT_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_and_8bit_range(name, channels):
    op, low, high = rand_augment.OPS[name]
    image = tiny_image(channels)
    for magnitude in (low, (low + high) / 2, high):
        out = op(image, magnitude).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(out, np.floor(out))


NEUTRAL = {"brightness": 1.0, "color": 1.0, "contrast": 1.0, "sharpness": 1.0,
           "posterize": 8.0, "rotate": 0.0, "shear_x": 0.0, "shear_y": 0.0,
           "solarize": 256.0, "translate_x": 0.0, "translate_y": 0.0, "identity": None}


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_ops_at_their_neutral_magnitude_change_nothing(name):
    image = tiny_image()
    op = rand_augment.OPS[name][0]
    np.testing.assert_array_equal(op(image, NEUTRAL[name]).numpy(), image)


def test_auto_contrast_stretches_and_leaves_a_full_range_image():
    full = tiny_image()
    full[0, 0], full[0, 1] = 0, 255
    np.testing.assert_array_equal(rand_augment.auto_contrast(full).numpy(), full)
    narrow = (tiny_image() // 4 + 50).astype(np.uint8)
    out = rand_augment.auto_contrast(narrow).numpy()
    # PIL's table truncates (x - lo) * 255 / (hi - lo): the top lands at 254 at times.
    assert np.all(out.min(axis=(0, 1)) == 0) and np.all(out.max(axis=(0, 1)) >= 254)
    constant = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(rand_augment.auto_contrast(constant).numpy(), constant)
    np.testing.assert_array_equal(rand_augment.equalize(constant).numpy(), constant)


def test_solarize_inverts_from_the_threshold_and_posterize_keeps_top_bits():
    image = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8, 1)
    out = rand_augment.solarize(image, 128.0).numpy()
    np.testing.assert_array_equal(out, np.where(image >= 128, 255 - image, image))
    np.testing.assert_array_equal(rand_augment.posterize(image, 4.9).numpy(), image & 0xF0)


PIL_CASES = {
    "auto_contrast": (None, lambda pil, v, P: P["ImageOps"].autocontrast(pil)),
    "brightness": (0.37, lambda pil, v, P: P["ImageEnhance"].Brightness(pil).enhance(v)),
    "color": (0.37, lambda pil, v, P: P["ImageEnhance"].Color(pil).enhance(v)),
    "contrast": (0.37, lambda pil, v, P: P["ImageEnhance"].Contrast(pil).enhance(v)),
    "equalize": (None, lambda pil, v, P: P["ImageOps"].equalize(pil)),
    "posterize": (5.7, lambda pil, v, P: P["ImageOps"].posterize(pil, int(v))),
    "rotate": (-23.0, lambda pil, v, P: pil.rotate(v)),
    "sharpness": (0.37, lambda pil, v, P: P["ImageEnhance"].Sharpness(pil).enhance(v)),
    "shear_x": (0.23, lambda pil, v, P: pil.transform(pil.size, P["AFFINE"], (1, v, 0, 0, 1, 0))),
    "shear_y": (-0.23, lambda pil, v, P: pil.transform(pil.size, P["AFFINE"], (1, 0, 0, v, 1, 0))),
    "solarize": (100.0, lambda pil, v, P: P["ImageOps"].solarize(pil, v)),
    "translate_x": (0.21, lambda pil, v, P: pil.transform(
        pil.size, P["AFFINE"], (1, 0, v * pil.size[0], 0, 1, 0))),
    "translate_y": (-0.27, lambda pil, v, P: pil.transform(
        pil.size, P["AFFINE"], (1, 0, 0, 0, 1, v * pil.size[1]))),
}


@pytest.mark.parametrize("name", sorted(PIL_CASES))
@pytest.mark.parametrize("channels", [1, 3])
def test_ops_match_pillow(name, channels):
    """Pillow's 8-bit ops (what the authors' RandAugment calls), where installed."""
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    modules = {"ImageOps": ImageOps, "ImageEnhance": ImageEnhance,
               "AFFINE": image_module.AFFINE}
    image = np.random.default_rng(1).integers(0, 256, (16, 16, channels)).astype(np.uint8)
    image[:5] = image[:5] // 3 + 60  # not uniform noise: equalize and contrast matter
    if name == "auto_contrast":
        image = (image // 2 + 40).astype(np.uint8)
    magnitude, reference = PIL_CASES[name]
    pil = image_module.fromarray(image[..., 0] if channels == 1 else image)
    expected = np.asarray(reference(pil, magnitude, modules)).reshape(image.shape)
    got = rand_augment.OPS[name][0](image, magnitude).numpy()
    if name != "rotate":
        np.testing.assert_array_equal(got, expected)
        return
    # Pillow rotates in fixed-point arithmetic: a pixel whose source point lies
    # within its rounding error of a pixel border may take the neighbour.
    differs = np.any(got != expected, axis=-1)
    assert differs.mean() <= 0.02, differs.sum()


def test_rand_augment_is_a_function_of_its_seed():
    image = tiny_image()
    first = rand_augment.rand_augment(image, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(rand_augment.rand_augment(image, tf.constant([3, 4])), first)
    outputs = [rand_augment.rand_augment(image, tf.constant([i, 0])).numpy() for i in range(6)]
    assert len({o.tobytes() for o in outputs}) > 1
    identity = rand_augment.rand_augment(image, tf.constant([3, 4]), op_names=["identity"])
    np.testing.assert_array_equal(identity, image)


def test_cutout_paints_one_clipped_square_of_at_most_half_the_width():
    image = np.zeros((16, 16, 3), np.uint8)
    for i in range(20):
        painted = np.all(rand_augment.cutout(image, tf.constant([i, 7])).numpy()
                         == rand_augment.CUTOUT_FILL_RGB, axis=-1)
        if not painted.any():
            continue
        rows, cols = np.nonzero(painted.any(1))[0], np.nonzero(painted.any(0))[0]
        # One axis-aligned block, sides <= 8, a square unless a border clipped it.
        assert painted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        height, width = len(rows), len(cols)
        assert max(height, width) <= 8
        if rows.min() > 0 and rows.max() < 15 and cols.min() > 0 and cols.max() < 15:
            assert abs(height - width) <= 1


# -- the command line -----------------------------------------------------------------

TINY = ["--dataset=synthetic", "--student=resnet8", "--batch_size=16",
        "--steps_per_epoch=2", "--lr_milestones=1", "--epochs=2"]


@pytest.mark.slow
def test_cli_trains_mlkd_on_two_views(tmp_path):
    teacher_dir = tmp_path / "teacher"
    train.run_with_args(["--method=none", *TINY, "--epochs=1", "--lr_milestones=",
                         f"--model_dir={teacher_dir}"])
    teacher = str(teacher_dir / "student.keras")
    with pytest.raises(app.UsageError, match="--augment=mixup"):
        train.run_with_args(["--method=mlkd", f"--teacher={teacher}", *TINY,
                             "--augment=mixup", f"--model_dir={tmp_path / 'mixed'}"])
    results = train.run_with_args([
        "--method=mlkd", f"--teacher={teacher}", *TINY, "--mlkd_temperatures=4,3,5,2,6",
        "--mlkd_masking=per_example", f"--model_dir={tmp_path / 'run'}"])
    metrics = results["final_metrics"]
    for name in ("ce", "ce_strong", "kd", "cc", "bc", "f_B", "f_K", "teacher_confidence",
                 "val_accuracy"):
        assert np.isfinite(metrics[name]), name
    assert 0 < metrics["f_B"] <= 1 and 0 < metrics["f_K"] <= 1
    assert results["flags"]["mlkd_masking"] == "per_example"
    assert (tmp_path / "run" / "student.keras").exists()
