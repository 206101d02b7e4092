"""The attention-map TensorBoard callback (FRSKD's Fig. 3)."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerakd
from reference import IMAGE_SHAPE, make_dataset, make_images
from kerakd.attention_maps import AttentionMapImages, attention_image


def image_summaries(log_dir):
    """`{tag: [(step, decoded images (N, H, W, C)), ...]}` of the event files."""
    found = {}
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                # An image summary is [width, height, png, png, ...].
                pngs = tf.make_ndarray(value.tensor)[2:]
                images = np.stack([tf.io.decode_png(p).numpy() for p in pngs])
                found.setdefault(value.tag, []).append((event.step, images))
    return found


def test_attention_image_matches_numpy():
    features = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    energy = (features**2).mean(-1)
    want = energy / energy.max(axis=(1, 2), keepdims=True)
    want = want.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    np.testing.assert_allclose(attention_image(features, (8, 8)), want, rtol=1e-5)


def test_frskd_writes_classifier_and_refined_maps_every_epoch(student, tmp_path):
    distiller = kerakd.Distiller(student, "frskd")
    distiller.compile(keras.optimizers.SGD(0.05))
    sample_images = make_images(8, seed=3)
    callbacks = distiller.method.callbacks(str(tmp_path), sample_images)
    distiller.fit(make_dataset(n=8), epochs=2, callbacks=callbacks, verbose=0)

    summaries = image_summaries(tmp_path)
    stages = ["stage1", "stage2", "stage3"]
    expected = {"input"} | {f"{g}/{s}" for g in ("classifier", "self_teacher") for s in stages}
    assert set(summaries) == expected
    assert [step for step, _ in summaries["input"]] == [0]
    for tag in expected - {"input"}:
        assert [step for step, _ in summaries[tag]] == [0, 1], tag
        for _, images in summaries[tag]:
            # The first 4 sample images, up-sampled to the input size, scaled to [0, 255].
            assert images.shape == (4, *IMAGE_SHAPE[:2], 1), tag
            assert images.max() == 255

    # Epoch 1's classifier maps are those of the trained student.
    stage3 = distiller.student_features(sample_images[:4])["stage3"]
    want = attention_image(stage3, IMAGE_SHAPE[:2]).numpy()
    got = summaries["classifier/stage3"][1][1]
    np.testing.assert_allclose(got / 255.0, want, atol=1 / 255)


def test_bad_images_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"batch of images \(N, H, W, C\)"):
        AttentionMapImages(str(tmp_path), np.zeros((16, 16, 3)), lambda d, x: {})
    with pytest.raises(ValueError, match="`max_images` must be >= 1"):
        AttentionMapImages(str(tmp_path), make_images(2), lambda d, x: {}, max_images=0)


def test_frskd_finds_its_taps_by_name_inside_a_composition(student):
    distiller = kerakd.Distiller(student, kerakd.methods.get("none+frskd"))
    distiller.build((8, *IMAGE_SHAPE))
    frskd = distiller.method.components[1]
    images = make_images(4)
    maps = frskd.attention_sources(distiller, images)
    assert list(maps["classifier"]) == list(maps["self_teacher"]) == ["stage1", "stage2", "stage3"]
    (stage3, _) = kerakd.taps.tap_model(student, ["stage3"])(images, training=False)
    np.testing.assert_allclose(maps["classifier"]["stage3"], stage3, rtol=1e-6)
