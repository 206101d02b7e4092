"""`lfma` (learning from features with multilevel abstraction) and `dsn` (deep supervision).

Both grow a classifier head from shallow and middle stages of the student
(`branches.py`) and train without a teacher; `docs/methods/lfma.md` documents them. DSN
is LFMA with the ensemble terms switched off and no Feature Map Cutout.
"""

import math

import keras
from keras import ops

from kerakd import compat
from kerakd import losses
from kerakd.blocks import branches
from kerakd.methods.base import Method, MethodOutput, check_non_negative, check_positive
from kerakd.methods.registry import register
from kerakd.nn import layers as nn_layers
from kerakd.taps import resolve_taps


@keras.saving.register_keras_serializable(package="kerakd")
class FeatureMapCutout(keras.layers.Layer):
    """Feature Map Cutout: zeroes whole spatial positions across all channels.

    In training, each position `(b, h, w)` of a `(B, H, W, C)` input is
    dropped independently with probability `rate`: `M* = Mask * M` with a
    fresh `(B, H, W, 1)` 0/1 mask per call. Unlike dropout, the kept values
    are not rescaled (the paper's equation). At inference it is the identity.

    Args:
        rate: probability of dropping a position, in [0, 1].
        seed: initial seed of the layer's random generator (None: from the
            global seed, `keras.utils.set_random_seed`).

    Example:

    >>> from kerakd.methods.lfma import FeatureMapCutout
    >>> cutout = FeatureMapCutout(0.25, seed=0)
    >>> features = np.ones((8, 16, 16, 32), "float32")
    >>> y = keras.ops.convert_to_numpy(cutout(features, training=True))
    >>> round(float((y == 0).mean()), 2)   # ~25% of positions are zero
    0.25
    >>> zero = y == 0
    >>> bool((zero.all(-1) == zero.any(-1)).all())   # a position loses all its channels
    True
    >>> bool((keras.ops.convert_to_numpy(cutout(features)) == features).all())   # inference
    True
    """

    def __init__(self, rate=0.25, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate <= 1:
            raise ValueError(f"`rate` is a probability and must be in [0, 1], got {rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or not self.rate:
            return inputs
        batch, height, width = ops.shape(inputs)[:3]
        noise = keras.random.uniform((batch, height, width, 1), seed=self.seed_generator)
        return inputs * ops.cast(noise >= self.rate, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


def ensemble_logits(head_logits, temperature):
    """Logits of the heads' averaged softened distribution, at temperature `T`.

    `D_E = mean_i softmax(z_i / T)`; returns `T * log D_E`, so that
    `softmax(result / T) = D_E` (and its arg-max is the ensemble's
    prediction). `log D_E` is a log-sum-exp of log-softmaxes, finite even
    where a probability underflows.
    """
    log_probs = ops.stack(
        [ops.log_softmax(ops.cast(z, "float32") / temperature, axis=-1) for z in head_logits]
    )
    log_mean = ops.logsumexp(log_probs, axis=0) - math.log(len(head_logits))
    return temperature * log_mean


@register("lfma")
class LFMA(Method):
    """LFMA: stage heads, Feature Map Cutout and a detached ensemble teacher.

    Documented in `docs/methods/lfma.md`.

    A head (`branches.py` builder, then Dense(classes)) grows from every
    student tap but the deepest (or every tap, `include_last=True`); the
    deepest tap sets the size and width the heads reach. With
    `T = temperature`, `z_b` the backbone's logits and `z_i` head i's:

        D_E = stopgrad(mean_i softmax(z_i / T))
        kd      = T^2 KL(D_E || softmax(z_b / T))          (alpha)
        head_kd = sum_i T^2 KL(D_E || softmax(z_i / T))    (beta)
        ce      = CE(z_b, y)                               (gamma)
        head_ce = sum_i CE(z_i, y)                         (delta)

    KL terms average over the examples. Feature Map Cutout masks each head's
    input in training. A term whose weight is 0 is neither computed nor
    reported (docs/methods/conventions.md, "Zero-weight terms"). Each head's accuracy is
    reported as `head<k>_accuracy`, k the 1-based tap index, and the
    ensemble's as `ensemble_accuracy`. Heads live in the method: the exported
    student is the plain backbone.

    Args:
        kd_weight: alpha, ensemble -> backbone (default 1).
        head_kd_weight: beta, ensemble -> each head (default 1).
        ce_weight: gamma, backbone cross-entropy (default 1).
        head_ce_weight: delta, heads' cross-entropy (default 1).
        temperature: T (default 4).
        fmc_probability: probability that Feature Map Cutout drops a
            position (default 0.25; 0 disables it).
        fmc_in_backbone: also feed the masked tap to the next backbone block
            (the paper's equation 7 read literally). A method cannot change
            the student's graph, so this needs the student from
            `method.prepare_student(student)`, which inserts the cutout after
            each head tap and points the method's taps at it (default False).
        include_last: also grow a head from the deepest tap (default False).
        head_builder: name of the branch builder of the heads
            (`kerakd.blocks.branches.builders`, default `"separable"`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("lfma"))   # no teacher
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'kd': 1.0, 'head_kd': 1.0, 'ce': 1.0, 'head_ce': 1.0}
    >>> distiller.method.count_params()   # the heads: the method's, not the student's
    18564
    """

    requires_teacher = False
    student_taps = {"features": "stages"}

    def __init__(
        self,
        kd_weight=1.0,
        head_kd_weight=1.0,
        ce_weight=1.0,
        head_ce_weight=1.0,
        temperature=4.0,
        fmc_probability=0.25,
        fmc_in_backbone=False,
        include_last=False,
        head_builder="separable",
        **kwargs,
    ):
        # The tap names `prepare_student` chose, carried by `get_config` so
        # that a saved Distiller reloads with them (not a user argument).
        prepared_taps = kwargs.pop("prepared_taps", None)
        super().__init__(**kwargs)
        weights = {"kd": kd_weight, "head_kd": head_kd_weight,
                   "ce": ce_weight, "head_ce": head_ce_weight}
        check_non_negative(
            kd_weight=kd_weight, head_kd_weight=head_kd_weight,
            ce_weight=ce_weight, head_ce_weight=head_ce_weight,
        )
        check_positive(temperature=temperature)
        if not 0 <= fmc_probability <= 1:
            raise ValueError(
                f"`fmc_probability` is a probability and must be in [0, 1], got {fmc_probability}."
            )
        self.kd_weight = kd_weight
        self.head_kd_weight = head_kd_weight
        self.ce_weight = ce_weight
        self.head_ce_weight = head_ce_weight
        self.temperature = temperature
        self.fmc_probability = fmc_probability
        self.fmc_in_backbone = bool(fmc_in_backbone)
        self.include_last = bool(include_last)
        self.head_builder = branches.check_builder(head_builder)
        self.cutout = FeatureMapCutout(fmc_probability, name="fmc")
        self.set_term_weights(weights)
        self.prepared_taps = None
        if prepared_taps:
            self._use_prepared_taps(prepared_taps)

    def _use_prepared_taps(self, names):
        self.prepared_taps = list(names)
        self.student_taps = {"features": self.prepared_taps}

    def _head_taps(self, count):
        """Indices of the taps that get a head, out of `count` taps."""
        heads = list(range(count if self.include_last else count - 1))
        if not heads:
            raise ValueError(
                f"{self.name} grows heads from every tap but the deepest, and "
                f"the student has {count} tap(s). Tap more stages, or pass "
                "include_last=True."
            )
        return heads

    @property
    def rewrites_student(self):
        return self.fmc_in_backbone

    def prepare_student(self, student):
        """The student with Feature Map Cutout after each head tap (`fmc_in_backbone`).

        Returns `student` unchanged unless `fmc_in_backbone`. Otherwise returns
        a functional model sharing every layer (and weight) of `student`, in
        which the output of each head tap `<tap>` passes through a
        `FeatureMapCutout` layer `<tap>_fmc` before the next block, and sets
        this method's taps to those layers, so heads and backbone see the
        same mask. The exported student then keeps these layers (identity at
        inference, no weights). Call it before building the `Distiller`:

        >>> method = kerakd.methods.get("lfma", fmc_in_backbone=True)
        >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
        >>> student = method.prepare_student(student)
        >>> [layer.name for layer in student.layers if layer.name.endswith("_fmc")]
        ['stage1_fmc', 'stage2_fmc']
        >>> distiller = kerakd.Distiller(student, method)
        """
        if not self.fmc_in_backbone:
            return student
        names = resolve_taps(student, self.student_taps["features"])
        cutouts = {
            names[i]: FeatureMapCutout(self.fmc_probability, name=f"{names[i]}_fmc")
            for i in self._head_taps(len(names))
        }
        top_level = {layer.name for layer in student.layers}
        nested = sorted(set(cutouts) - top_level)
        if nested:
            raise ValueError(
                f"fmc_in_backbone inserts the cutout after layers of the "
                f"student's own graph; {nested} are inside a nested model."
            )

        def operation_fn(operation):
            def call(*args, **kwargs):
                outputs = operation(*args, **kwargs)
                cutout = cutouts.get(operation.name)
                return cutout(outputs) if cutout is not None else outputs

            return call

        inputs = keras.Input(batch_shape=student.inputs[0].shape, name=student.inputs[0].name)
        outputs = compat.run_through_graph(student, inputs, operation_fn)
        self._use_prepared_taps([f"{n}_fmc" if n in cutouts else n for n in names])
        return keras.Model(inputs, outputs, name=student.name)

    def build(self, spec):
        super().build(spec)
        taps = spec.student["features"]
        self.head_taps = self._head_taps(len(taps))
        if self.fmc_in_backbone:
            names = spec.student_tap_names.get("features", [])
            unmasked = [names[i] for i in self.head_taps if not names[i].endswith("_fmc")]
            if unmasked:
                raise ValueError(
                    f"fmc_in_backbone=True, but the head taps {unmasked} are not "
                    "Feature Map Cutout layers. Build the Distiller from "
                    "`student = method.prepare_student(student)`, or pass "
                    "student_taps naming its `<tap>_fmc` layers."
                )
        self.heads = []
        for i in self.head_taps:
            name = f"head{i + 1}"
            inputs, features = branches.branch_features(
                self.head_builder, taps[i], taps[-1], name
            )
            logits = nn_layers.linear(spec.num_classes, features.shape[-1],
                                      name=f"{name}_logits")(features)
            self.heads.append(keras.Model(inputs, logits, name=name))

    def call(self, data, training=False):
        taps = data.student["features"]
        head_logits = []
        for i, head in zip(self.head_taps, self.heads):
            features = taps[i]
            if not self.fmc_in_backbone:
                features = self.cutout(features, training=training)
            head_logits.append(ops.cast(head(features, training=training), "float32"))
        target = ops.stop_gradient(ensemble_logits(head_logits, self.temperature))
        t = self.temperature
        terms = {
            "kd": lambda: losses.kd_loss(data.student_logits, target, t),
            "head_kd": lambda: sum(losses.kd_loss(z, target, t) for z in head_logits),
            "ce": lambda: losses.cross_entropy(data.labels, data.student_logits),
            "head_ce": lambda: sum(losses.cross_entropy(data.labels, z) for z in head_logits),
        }
        predictions = {f"head{i + 1}": z for i, z in zip(self.head_taps, head_logits)}
        predictions["ensemble"] = target
        return MethodOutput(
            losses=self.weighted(terms),
            logits=predictions,
        )

    def get_config(self):
        config = super().get_config()
        if self.prepared_taps:
            config["prepared_taps"] = self.prepared_taps
        return config


@register("dsn")
class DSN(LFMA):
    """Deep supervision: stage heads trained by cross-entropy only (docs/methods/dsn.md).

    LFMA with `kd_weight = head_kd_weight = 0` (its `dsn` ablation): the
    terms are `ce` (backbone) and `head_ce` (sum over heads), and Feature Map
    Cutout is off by default. The heads' ensemble (LFMA's, at T = 4) is still
    reported as `ensemble_accuracy`, next to each `head<k>_accuracy`.

    Args:
        ce_weight: weight of the backbone cross-entropy (default 1).
        head_ce_weight: weight of the heads' cross-entropy (default 1).
        fmc_probability: Feature Map Cutout on the heads' inputs (default 0).
        include_last: also grow a head from the deepest tap (default False).
        head_builder: branch builder name (default `"separable"`).

    Example:

    >>> student = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(student, kerakd.methods.get("dsn"))   # no teacher
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0, 'head_ce': 1.0}
    """

    def __init__(
        self,
        ce_weight=1.0,
        head_ce_weight=1.0,
        fmc_probability=0.0,
        include_last=False,
        head_builder="separable",
        **kwargs,
    ):
        super().__init__(
            kd_weight=0.0,
            head_kd_weight=0.0,
            ce_weight=ce_weight,
            head_ce_weight=head_ce_weight,
            fmc_probability=fmc_probability,
            include_last=include_last,
            head_builder=head_builder,
            **kwargs,
        )
