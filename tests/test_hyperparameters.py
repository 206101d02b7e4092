"""One vocabulary for every method's hyperparameters and one contract for
zero-weight terms (docs/methods/conventions.md, "Hyperparameter names" and
"Zero-weight terms"), tested for every registered method."""

import json
import warnings
import zipfile

import keras
import numpy as np
import pytest
from absl import flags

import kerakd
from kerakd import flags as kerakd_flags
from kerakd import run_directory

SHAPE, BATCH, CLASSES = (16, 16, 3), 8, 5
REQUIRED = {"crd": {"num_data": BATCH}}
# Arguments that need another setting to apply (CTKD's DKD weights: host dkd).
CONTEXT = {("ctkd", "tckd_weight"): {"host": "dkd"}, ("ctkd", "nckd_weight"): {"host": "dkd"}}
# Weights shared by a family of terms (the rule's second point); every other
# `<term>_weight` multiplies the term `<term>` alone.
FAMILIES = {
    ("mlkd", "ce_weight"): {"ce", "ce_strong"},
    ("mlkd", "kd_weight"): {"kd", "cc", "bc"},
    ("dist", "kd_weight"): {"inter", "intra"},
}
RENAMED = [  # (method, old, new, a value)
    ("frskd", "alpha", "self_kd_weight", 3.0),
    ("frskd", "beta", "self_at_weight", 50.0),
    ("dkd", "alpha", "tckd_weight", 2.0),
    ("dkd", "beta", "nckd_weight", 4.0),
    ("ctkd", "dkd_alpha", "tckd_weight", 2.0),
    ("ctkd", "dkd_beta", "nckd_weight", 4.0),
    ("dist", "beta", "inter_weight", 0.5),
    ("dist", "gamma", "intra_weight", 3.0),
    ("fitnet", "hint_stage", "stage", 2),
]


def weight_arguments(name):
    return [a for a in kerakd_flags.method_arguments(name) if a.endswith("_weight")]


def make(name, **kwargs):
    return kerakd.methods.get(name, **REQUIRED.get(name, {}), **kwargs)


WEIGHTS = [(name, argument) for name in kerakd.methods.available()
           for argument in weight_arguments(name)]


# -- the names ------------------------------------------------------------------

@pytest.mark.parametrize("name, argument", WEIGHTS)
def test_each_weight_multiplies_the_terms_it_is_named_after(name, argument):
    context = CONTEXT.get((name, argument), {})
    full = make(name, **context)
    zero = make(name, **context, **{argument: 0.0})
    expected = FAMILIES.get((name, argument), {argument[:-len("_weight")]})
    assert set(full.term_weights) - set(zero.term_weights) == expected
    assert set(zero.zero_weight_terms) - set(full.zero_weight_terms) == expected


@pytest.mark.parametrize("name", kerakd.methods.available())
def test_no_argument_is_named_by_a_paper_letter_or_another_stage_word(name):
    arguments = set(kerakd_flags.method_arguments(name))
    assert not arguments & {"alpha", "beta", "gamma"}
    assert {a for a in arguments if "stage" in a} <= {"stage", "stages"}


@pytest.mark.parametrize("name, old, new, value", RENAMED)
def test_an_old_argument_name_warns_naming_the_new_and_still_works(name, old, new, value):
    context = {"host": "dkd"} if name == "ctkd" else {}
    with pytest.warns(FutureWarning, match=f"`{old}` is deprecated, use `{new}`"):
        method = make(name, **context, **{old: value})
    assert getattr(method, new) == value and method.get_config()[new] == value
    assert old not in method.get_config()
    with pytest.raises(TypeError, match=f"pass `{new}` only"):
        make(name, **context, **{old: value, new: value})


@pytest.mark.parametrize("name, old, new, value", RENAMED)
def test_an_old_config_loads(name, old, new, value):
    context = {"host": "dkd"} if name == "ctkd" else {}
    config = make(name, **context, **{new: value}).get_config()
    config[old] = config.pop(new)
    with pytest.warns(FutureWarning, match=f"use `{new}`"):
        method = kerakd.methods.registry.factory(name).from_config(config)
    assert getattr(method, new) == value


def test_a_keras_file_saved_with_old_argument_names_loads(tmp_path):
    student = kerakd.models.get("resnet8", CLASSES, SHAPE)
    distiller = kerakd.Distiller(student, kerakd.methods.get(
        "frskd", self_kd_weight=1.5, self_at_weight=30.0))
    distiller.compile(keras.optimizers.SGD(0.01))
    images = np.random.default_rng(0).normal(size=(BATCH, *SHAPE)).astype("float32")
    distiller.build(images.shape)
    new, old = tmp_path / "new.keras", tmp_path / "old.keras"
    distiller.save(new)
    # The same file as a kerakd from before the rename wrote it.
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                text = data.decode()
                assert '"self_kd_weight": 1.5' in text
                text = text.replace('"self_kd_weight"', '"alpha"').replace(
                    '"self_at_weight"', '"beta"')
                data = text.encode()
            target.writestr(item, data)
    with pytest.warns(FutureWarning, match="use `self_kd_weight`"):
        loaded = keras.models.load_model(old)
    assert (loaded.method.self_kd_weight, loaded.method.self_at_weight) == (1.5, 30.0)
    assert json.dumps(loaded.method.get_config(), sort_keys=True) == json.dumps(
        distiller.method.get_config(), sort_keys=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               distiller.predict(images, verbose=0), rtol=1e-6)


# -- the flags --------------------------------------------------------------------

def test_old_flags_are_deprecated_aliases_of_the_new():
    assert kerakd_flags.canonical_flag_name("frskd_alpha") == "frskd_self_kd_weight"
    assert kerakd_flags.canonical_flag_name("frskd_temperature") == "frskd_temperature"
    with pytest.warns(FutureWarning, match="--frskd_alpha is deprecated, use "
                                           "--frskd_self_kd_weight"):
        fv = kerakd_flags.parse(["kerakd-train", "--method=frskd", "--frskd_alpha=3",
                                 "--model_dir=x"])
    assert kerakd_flags.method_hparams(fv) == {"frskd": {"self_kd_weight": 3.0}}
    recorded = kerakd_flags.flag_dict(fv)
    assert recorded["frskd_self_kd_weight"] == 3.0 and "frskd_alpha" not in recorded
    assert "--frskd_self_kd_weight=3.0" in kerakd_flags.flagfile_lines(fv)
    assert not any("alpha" in line for line in kerakd_flags.flagfile_lines(fv))
    assert "frskd_alpha" not in kerakd_flags.help_text("frskd")
    with pytest.raises(flags.Error, match="--frskd_alpha is the old name"):
        kerakd_flags.parse(["kerakd-train", "--method=frskd", "--frskd_alpha=3",
                            "--frskd_self_kd_weight=3", "--model_dir=x"])


@pytest.mark.parametrize("method, old, new", [
    ("frskd", ["--frskd_alpha=2", "--frskd_beta=100"],
     ["--frskd_self_kd_weight=2", "--frskd_self_at_weight=100"]),
    ("dist", ["--dist_beta=1", "--dist_gamma=0.5"],
     ["--dist_inter_weight=1", "--dist_intra_weight=0.5"]),
    ("dkd", ["--dkd_alpha=1", "--dkd_beta=8"], ["--dkd_tckd_weight=1", "--dkd_nckd_weight=8"]),
    ("ctkd", ["--ctkd_host=dkd", "--ctkd_dkd_beta=4"],
     ["--ctkd_host=dkd", "--ctkd_nckd_weight=4"]),
    ("fitnet", ["--fitnet_hint_stage=1"], ["--fitnet_stage=1"]),
])
def test_a_run_recorded_with_old_flag_names_resumes_as_the_same_recipe(
        tmp_path, method, old, new):
    teacher = [] if method == "frskd" else ["--teacher=t.keras"]
    common = [f"--method={method}", *teacher, "--dataset=synthetic", "--epochs=2",
              "--lr_milestones=", f"--model_dir={tmp_path}"]
    # run.flags as kerakd-train wrote it before the rename.
    (tmp_path / "run.flags").write_text("\n".join(sorted([*common, *old])) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        before = kerakd_flags.flag_dict(kerakd_flags.parse(
            ["kerakd-train", f"--flagfile={tmp_path / 'run.flags'}"]))
        now = kerakd_flags.parse(["kerakd-train", *common, *new])
        assert before == kerakd_flags.flag_dict(now)
        assert run_directory.flag_changes(str(tmp_path), now) == []
        other = kerakd_flags.parse(["kerakd-train", *common, *new[:-1], new[-1] + "5"])
        changed = run_directory.flag_changes(str(tmp_path), other)
    assert len(changed) == 1 and changed[0].startswith(f"--{new[-1][2:].split('=')[0]}: ")


# -- zero-weight terms -----------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in kerakd.methods.available() if weight_arguments(n)])
def test_every_weight_zero_is_an_error_unless_a_fixed_weight_remains(name):
    contexts = {} if name != "ctkd" else {"host": "kd", "tckd_weight": None,
                                          "nckd_weight": None}
    arguments = [a for a in weight_arguments(name) if contexts.get(a, 0.0) is not None]
    zeros = {a: 0.0 for a in arguments}
    full = make(name, **{k: v for k, v in contexts.items() if v is not None})
    covered = set().union(*(FAMILIES.get((name, a), {a[:-len("_weight")]}) for a in arguments))
    if covered >= set(full.term_weights):
        with pytest.raises(ValueError, match="Every loss weight of .* is 0"):
            make(name, **{k: v for k, v in contexts.items() if v is not None}, **zeros)
    else:  # FRSKD's two CE terms have no argument: they stay
        method = make(name, **zeros)
        assert set(method.term_weights) == set(full.term_weights) - covered


# The weight each method's step test sets to 0: its own term, or the costly one.
STEP_ZERO = {"aid": "relation_weight", "ctkd": "kd_weight", "mlkd": "kd_weight"}


def step_batch(method):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, *SHAPE)).astype("float32")
    x = {"images": images}
    if method.needs_index:
        x["index"] = np.arange(BATCH, dtype="int64")
    if method.needs_strong_view:
        x["strong_images"] = rng.normal(size=(BATCH, *SHAPE)).astype("float32")
    return (x if len(x) > 1 else images), rng.integers(0, CLASSES, BATCH).astype("int32")


@pytest.mark.parametrize("name", [n for n in kerakd.methods.available() if weight_arguments(n)])
def test_a_zero_weight_term_is_neither_computed_into_the_loss_nor_reported(name):
    argument = STEP_ZERO.get(name, weight_arguments(name)[-1])
    method = make(name, **{argument: 0.0})
    student = kerakd.models.get("resnet8", CLASSES, SHAPE)
    teacher = kerakd.models.get("wrn_16_1", CLASSES, SHAPE) if method.requires_teacher else None
    distiller = kerakd.Distiller(student, method, teacher)
    distiller.compile(keras.optimizers.SGD(0.01), run_eagerly=True)
    x, y = step_batch(method)
    distiller.build((BATCH, *SHAPE))
    terms = distiller.compute_loss_terms(x, y, training=True)
    assert set(terms) == set(method.term_weights)
    assert not set(terms) & set(method.zero_weight_terms) and method.zero_weight_terms
    assert all(np.isfinite(float(v)) for v in terms.values())
    logs = distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history
    assert not set(logs) & set(method.zero_weight_terms)
    assert set(method.term_weights) <= set(logs)
    if name == "aid":  # the relation term's projection head is not built
        assert method.projection is None


def test_a_composition_still_compares_a_zero_ce_weight():
    with pytest.raises(ValueError, match="weight the label cross-entropy `ce` differently"):
        kerakd.methods.get("kd+at", kd={"ce_weight": 0.0})
    method = kerakd.methods.get("kd+at", kd={"ce_weight": 0.0}, at={"ce_weight": 0.0})
    assert "ce" not in method.components[0].term_weights
