"""`none`: plain cross-entropy training (also how teachers are trained)."""

from kerakd import losses
from kerakd.methods.base import Method, MethodOutput
from kerakd.methods.registry import register


@register("none")
class Plain(Method):
    """Cross-entropy on the labels, no teacher.

    Example:

    >>> model = kerakd.models.get("resnet8", 10, (16, 16, 3))
    >>> distiller = kerakd.Distiller(model, "none")   # no teacher
    >>> distiller.build((8, 16, 16, 3))   # as fit does on the first batch
    >>> distiller.method.term_weights
    {'ce': 1.0}
    """

    requires_teacher = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.set_term_weights({"ce": 1.0})

    def call(self, data, training=False):
        return MethodOutput(
            losses={"ce": losses.cross_entropy(data.labels, data.student_logits)}
        )
