"""The rule that a teacher is given exactly when the method distills from one.

A module without TensorFlow: the `Distiller` and `kerakd-train` (before
TensorFlow loads) both apply it.
"""


def check_teacher(method, requires_teacher, has_teacher, teacher="teacher="):
    """Checks that a teacher is given exactly when the method distills from one.

    The `Distiller` and `kerakd-train` (before it loads anything) both ask.

    Args:
        method: how the messages name the method (`"method 'kd'"`,
            `"--method=kd"`).
        requires_teacher: the method's `requires_teacher`.
        has_teacher: whether a teacher is given.
        teacher: how the messages name the teacher argument: `"teacher="`
            (the Distiller's) or `"--teacher"`.

    Raises:
        ValueError: naming the method, and the teacher to pass or to drop.
    """
    if requires_teacher and not has_teacher:
        raise ValueError(f"{method} distills from a teacher: pass {teacher}.")
    if not requires_teacher and has_teacher:
        raise ValueError(
            f"{teacher} is set, but {method} trains without a teacher "
            f"(self-distillation or plain training); do not pass {teacher}."
        )
