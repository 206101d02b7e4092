"""Distillation methods, by name.

Every method module is imported below, so importing `kerakd` registers all
of them; `get`, `register`, `available` and `registry` (the `Registry` of
method classes) come from `kerakd.methods.registry`. A new method's module
joins the list below; `tests/test_methods_layout.py` checks that none is
missing, and that no module of this package imports the package itself (it
is half-initialised while they load).

Example:

>>> kerakd.methods.available()
['afd', 'aid', 'at', 'crd', 'ctkd', 'dist', 'dkd', 'dsn', 'fitnet', 'frskd', 'kd', 'lfma',
 'mlkd', 'none', 'pkt', 'rkd', 'semckd', 'sp', 'vid']
>>> method = kerakd.methods.get("kd", temperature=2)
>>> method.ce_weight, method.kd_weight, method.temperature
(0.1, 0.9, 2)
>>> both = kerakd.methods.get("fitnet+crd", crd={"num_data": 50000})
>>> [part.name for part in both.components]
['fitnet', 'crd']
"""

from kerakd.methods.registry import available, get, register, registry  # noqa: F401
from kerakd.methods.base import Method, MethodOutput, StepData, TapSpec  # noqa: F401

# Each module registers its methods when imported.
from kerakd.methods import (  # noqa: F401
    afd,
    aid,
    at,
    compose,
    crd,
    ctkd,
    dist,
    dkd,
    feature_ops,
    fitnet,
    frskd,
    kd,
    lfma,
    logit_standardization,
    mlkd,
    pkt,
    plain,
    rkd,
    semckd,
    sp,
    vid,
)
