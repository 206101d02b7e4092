"""`Distiller.compute_losses` (the loss and terms `fit` logs) and the check
that every term a method returns has a weight."""

import keras
import numpy as np
import pytest

import kerakd
from kerakd import losses
from kerakd.methods.base import Method, MethodOutput
from reference import IMAGE_SHAPE, make_images, make_labels


def test_compute_losses_are_what_a_training_step_logs(teacher, student):
    distiller = kerakd.Distiller(student, "kd", teacher)
    images, labels = make_images(8), make_labels(8)
    expected = distiller.compute_losses(images, labels, training=True)
    distiller.compile(keras.optimizers.SGD(0.0))
    logs = distiller.fit(images, labels, batch_size=8, epochs=1, verbose=0).history
    assert set(expected) == set(logs) - {"accuracy"} == {"loss", "ce", "kd"}
    for name, value in expected.items():  # the terms unweighted, as logged
        np.testing.assert_allclose(logs[name][0], float(value), rtol=1e-4, err_msg=name)
    weighted = distiller.compute_loss_terms(images, labels, training=True)
    np.testing.assert_allclose(float(expected["loss"]), float(sum(weighted.values())), rtol=1e-5)


class ExtraTerm(Method):
    """Returns a term (`extra`) that has no weight."""

    requires_teacher = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.set_term_weights({"ce": 1.0})

    def call(self, data, training=False):
        ce = losses.cross_entropy(data.labels, data.student_logits)
        return MethodOutput(losses={"ce": ce, "extra": ce})


def test_a_term_without_a_weight_is_named_when_the_distiller_builds(student):
    distiller = kerakd.Distiller(student, ExtraTerm())
    with pytest.raises(ValueError, match=r"returns terms \['extra'\] that have no weight"):
        distiller.build((8, *IMAGE_SHAPE))
