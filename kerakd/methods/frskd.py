"""`frskd`: Ji et al., "Refine Myself by Teaching Myself: Feature Refinement via
Self-Knowledge Distillation" (CVPR 2021)."""

from keras import ops

from kerakd import losses
from kerakd.attention_maps import AttentionMapImages
from kerakd.blocks.bifpn import bifpnc
from kerakd.methods.base import (Method, MethodOutput, check_non_negative, check_positive,
                                 renamed_arguments)
from kerakd.methods.registry import register


@register("frskd")
class FRSKD(Method):
    """Self-distillation from a BiFPNc self-teacher built on the student's stages.

    The objective (docs/methods/frskd.md) is

        CE(z_c, y) + CE(z_t, y) + self_kd_weight * KD_T(z_c, stopgrad(z_t))
            + self_at_weight * sum_i AT(f_i, stopgrad(relu(o_i)))

    with `f_i` the classifier's stage features, `relu(o_i)` the self-teacher's
    refined maps and `z_t` its logits. KD and AT train only the classifier;
    `CE(z_t)` trains the self-teacher and, through its inputs (which are not
    stop-gradient, as in the authors' code), the classifier's backbone too.
    Reported terms: `ce`, `self_teacher_ce`, `self_kd` (the KD term against
    the self-teacher) and `self_at` (the summed AT terms); the self-teacher's
    accuracy is reported as `self_teacher_accuracy`. (`self_kd` is not named
    `kd`: it distils from the self-teacher, not from a teacher network.) The
    self-teacher lives in the method, so `distiller.student` exports without it. With soft labels
    (MixUp/CutMix) both CE terms are mixed. `self_at_weight=0` gives FRSKD\\F.

    The stage taps pass through a ReLU before use, as the authors' code feeds
    `relu(f_i)` to the self-teacher: a no-op for post-ReLU taps (the CIFAR
    ResNets), the rectified stage output for raw residual sums (the WRNs).

    Args:
        self_kd_weight: weight of the `self_kd` term, the paper's alpha
            (default 2, CIFAR-100; 3 TinyImageNet; 1 fine-grained and
            ImageNet). Old name: `alpha`.
        self_at_weight: weight of the `self_at` term (the summed AT terms),
            the paper's beta (default 100; 200 fine-grained and ImageNet; 0
            for FRSKD\\F). Old name: `beta`.
        temperature: T of the KD term (default 4).
        width: channel multiplier of the self-teacher: level `i` works at
            `width * c_i` channels (default 2).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("frskd"))   # no teacher
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'self_teacher_ce': 1.0, 'self_kd': 2.0, 'self_at': 100.0}
    >>> no_at = kerakd.Distiller(student, kerakd.methods.get("frskd", self_at_weight=0))
    >>> no_at.build((8, 16, 16, 3))
    >>> no_at.method.term_weights   # a zero weight drops its term
    {'ce': 1.0, 'self_teacher_ce': 1.0, 'self_kd': 2.0}
    """

    requires_teacher = False
    student_taps = {"features": "stages"}

    @renamed_arguments(alpha="self_kd_weight", beta="self_at_weight")
    def __init__(self, self_kd_weight=2.0, self_at_weight=100.0, temperature=4.0, width=2,
                 **kwargs):
        super().__init__(**kwargs)
        check_non_negative(self_kd_weight=self_kd_weight, self_at_weight=self_at_weight)
        check_positive(temperature=temperature, width=width)
        if int(width) != width:
            raise ValueError(f"`width` must be a whole number, got {width}.")
        self.self_kd_weight = self_kd_weight
        self.self_at_weight = self_at_weight
        self.temperature = temperature
        self.width = int(width)
        self.set_term_weights({
            "ce": 1.0, "self_teacher_ce": 1.0, "self_kd": self_kd_weight,
            "self_at": self_at_weight,
        })

    def build(self, spec):
        super().build(spec)
        self.self_teacher = bifpnc(
            spec.student["features"], spec.num_classes, self.width, name="self_teacher"
        )

    def refine(self, taps, training=False):
        """Runs the self-teacher on the classifier's stage taps.

        Args:
            taps: the classifier's `"features"` taps, shallow to deep.
            training: BatchNorm mode of the self-teacher.

        Returns:
            `(features, refined, logits)`: the rectified taps `f_i`, the
            refined maps `relu(o_i)` and the self-teacher's logits `z_t`.
        """
        features = [ops.relu(f) for f in taps]
        *refined, logits = self.self_teacher(features, training=training)
        return features, refined, logits

    def call(self, data, training=False):
        features, refined, teacher_logits = self.refine(
            data.student["features"], training=training
        )
        return MethodOutput(
            losses=self.weighted({
                "ce": losses.cross_entropy(data.labels, data.student_logits),
                "self_teacher_ce": losses.cross_entropy(data.labels, teacher_logits),
                "self_kd": losses.kd_loss(
                    data.student_logits, teacher_logits, self.temperature
                ),
                "self_at": lambda: sum(
                    losses.at_loss(f, r) for f, r in zip(features, refined)),
            }),
            logits={"self_teacher": teacher_logits},
        )

    def callbacks(self, log_dir, sample_images):
        """Classifier vs refined attention maps in TensorBoard (paper Fig. 3)."""
        return [AttentionMapImages(log_dir, sample_images, self.attention_sources)]

    def attention_sources(self, distiller, images):
        """`{"classifier": {tap: f_i}, "self_teacher": {tap: relu(o_i)}}` for
        `images`, both networks in inference mode."""
        # By layer name, not role: in a composition the role is prefixed.
        by_name = distiller.student_features(images)
        names = self.spec.student_tap_names["features"]
        features, refined, _ = self.refine([by_name[n] for n in names], training=False)
        return {
            "classifier": dict(zip(names, features)),
            "self_teacher": dict(zip(names, refined)),
        }
