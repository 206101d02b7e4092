"""Flags of `kerakd-train`, with one flag per hyperparameter of every method.

Each registered method's constructor arguments become `--<method>_<argument>`
flags (`--kd_temperature`, `--fitnet_stage`), typed by their defaults
(bool, int, float, str; lists and tuples as comma lists; other defaults as
Python literals), with the help text of the method docstring's Args section.
Only the chosen method's flags may be set.

Example (`--flagfile=configs/kd.flags` reads the same flags from a file):

>>> from kerakd import flags
>>> flag_values = flags.parse(["kerakd-train", "--method=kd", "--teacher=teacher.keras",
...                            "--kd_temperature=2", "--model_dir=runs/kd"])
>>> flags.check_flags(flag_values)   # reads no file
>>> flags.method_hparams(flag_values)   # the flags set; the others keep the method's defaults
{'kd': {'temperature': 2.0}}
>>> flag_values.student, flag_values.dataset, flag_values.epochs   # kerakd-train's defaults
('resnet8x4', 'cifar100', 240)
>>> flags.check_flags(flags.parse(["kerakd-train", "--method=kd", "--model_dir=runs/kd"]))
Traceback (most recent call last):
...
absl.app.UsageError: --method=kd distills from a teacher: pass --teacher. Train one with --method=none: its student.keras is the teacher.
"""

import ast
import os
import re
import warnings

from absl import app
from absl import flags

# No TensorFlow here: `kerakd-train` parses and checks its flags before it
# loads TensorFlow. What the flags need to know of the methods, the zoo and
# the data comes from the catalog and `kerakd.data.names`.
from kerakd import catalog
from kerakd.data import names as dataset_names
from kerakd.registry import unknown_name_message
from kerakd.teacher_check import check_teacher

OPTIMIZERS = ("sgd", "adam", "adamw")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _define_core_flags(flag_values):
    """Defines the flags that do not depend on the registered methods."""

    def define(kind, name, default, help, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(
            name, default, help=help, flag_values=flag_values, module_name=__name__,
            **kwargs)

    # The defaults are the CIFAR-100 recipe of the papers (docs/methods/kd.md).
    define("string", "method", "none", "Distillation method: " + ", ".join(
        available_methods()) + "; 'a+b' trains several together. 'none' "
        "trains a model alone (how teachers are made).")
    define("string", "teacher", None, "Trained teacher: a .keras file of a "
                        "model `images -> logits` (e.g. an earlier run's student.keras).")
    define("string", "student", "resnet8x4", "Student: a zoo model, one of "
                        + ", ".join(catalog.current()["models"]) + ".")
    define("string", "dataset", "cifar100", "fashion_mnist, cifar10, cifar100, "
                        "imagenet2012, synthetic, tfds:<name> or folder:<path>.")
    define("string", "data_dir", None, "Fashion-MNIST's IDX directory, or the "
                        "tfds data directory (default ~/tensorflow_datasets).")
    define("integer", "image_size", None, "Side of the images the models read "
                         "(default: the dataset's own; 224 for variable sizes).",
                         lower_bound=1)
    define("integer", "epochs", 240, "Training epochs.", lower_bound=1)
    define("integer", "batch_size", 64, "Global batch size (split over replicas).",
                         lower_bound=1)
    define("integer", "steps_per_epoch", None, "Cap on the steps of an epoch "
                         "(default: one pass over the training set).", lower_bound=1)
    define("enum", "optimizer", "sgd", "Optimizer.", enum_values=OPTIMIZERS)
    define("float", "learning_rate", 0.05, "Initial learning rate.", lower_bound=0)
    define("list", "lr_milestones", ["150", "180", "210"], "Epochs at which the "
                      "learning rate is multiplied by --lr_decay (comma list; empty: none).")
    define("float", "lr_decay", 0.1, "Factor applied at each milestone.", lower_bound=0)
    define("integer", "warmup_epochs", 0, "Epochs of linear learning-rate warm-up.",
                         lower_bound=0)
    define("float", "momentum", 0.9, "SGD momentum (--optimizer=sgd).", lower_bound=0)
    define("boolean", "nesterov", False, "Nesterov momentum (--optimizer=sgd).")
    define("float", "weight_decay", 5e-4, "L2 weight decay as PyTorch applies it: "
                       "added to the gradient (coupled) for sgd and adam, decoupled "
                       "for adamw.", lower_bound=0)
    define("float", "clip_grad_norm", 0.0, "If positive, scale each step's loss "
           "gradient (global batch, before weight decay) down to this global L2 "
           "norm, as PyTorch's clip_grad_norm_; 0 = off.", lower_bound=0)
    define("string", "model_dir", None, "Output directory: student.keras, "
                        "best.keras, results.json, logs/ (TensorBoard), checkpoints/. "
                        "Rerunning the same command resumes a killed run.",
           required=True)
    define("integer", "seed", 0, "Random seed.")
    define("boolean", "deterministic", False, "Deterministic ops (slower; tfds "
           "files are read in order): the same command gives bit-identical "
           "results, and a killed run resumes exactly.")
    define("enum", "nan_policy", "stop", "On a NaN or Inf loss: stop (exit with an "
           "error; the last checkpoint is kept) or skip_batch (apply no update for "
           "that batch; counted as skipped_batches).", enum_values=catalog.current()["nan_policies"])
    define("float", "max_skipped_share", 0.5, "With --nan_policy=skip_batch: stop "
           "the run (exit 1, the last checkpoint kept) once more than this share "
           "of an epoch's batches, or all of them, were skipped.", lower_bound=0,
           upper_bound=1)
    define("integer", "log_every_steps", 50, "Outside a terminal (a log file, a "
           "notebook), print the running metrics every this many steps (0: one "
           "line per epoch only); a terminal shows Keras's progress bar.", lower_bound=0)
    define("boolean", "overwrite", False, "Start over in a --model_dir that holds "
           "a run: move that run aside to <model_dir>.replaced-<time>.")
    define("enum", "strategy", "default", "tf.distribute strategy: one device, all "
           "local GPUs (mirrored), TF_CONFIG's workers (multi_worker) or the "
           "TPU cores of --tpu.", enum_values=STRATEGIES)
    define("string", "tpu", "local", "With --strategy=tpu: the TPU to connect to, "
           "'local' on a TPU VM, else its name or grpc:// address.")
    define("integer", "num_logical_cpus", None, "Split the CPU into this many "
                         "logical devices (to try --strategy=mirrored without GPUs).",
                         lower_bound=1)
    define("boolean", "sync_batchnorm", False, "Normalize the student's BatchNorm "
                         "with the statistics of the global batch instead of each "
                         "replica's share (needs a distribution --strategy).")
    define("boolean", "mixed_precision", False, "Compute in mixed_float16 on GPU, "
                         "mixed_bfloat16 on CPU.")
    define("boolean", "jit_compile", False, "Compile steps with XLA (slower on CPU).")
    define("enum", "augment", "standard", "Augmentation: none, standard (the papers' "
           "crop + flip), mixup or cutmix (standard then batch mixing, soft labels).",
           enum_values=dataset_names.AUGMENTATIONS)
    define("float", "mix_alpha", 1.0, "Beta(alpha, alpha) of the mixing ratio "
                       "(--augment=mixup or cutmix).", lower_bound=0)
    define("list", "student_taps", None, "Student layers the method reads, shallow "
                      "to deep (comma list; a tap kind such as 'stages'; or "
                      "role:layer items for methods with several roles).")
    define("list", "teacher_taps", None, "The same for the teacher.")


def available_methods():
    """The registered method names (without importing them)."""
    return sorted(catalog.current()["methods"])


def _method_entry(name):
    """Method `name`'s catalog entry: its arguments, renamed arguments, teacher."""
    entries = catalog.current()["methods"]
    if name not in entries:
        raise ValueError(unknown_name_message("method", name, entries))
    return entries[name]


def method_arguments(name):
    """`{argument: default}` of method `name`'s constructor (`inspect.Parameter.empty`
    when it has none)."""
    return {argument: catalog.default(entry)
            for argument, entry in _method_entry(name)["arguments"].items()}


def method_argument_types(name):
    """`{argument: type}` of method `name`'s constructor (None: a Python literal)."""
    return {argument: catalog.value_type(entry)
            for argument, entry in _method_entry(name)["arguments"].items()}


def renamed_method_arguments(name):
    """`{old name: new name}` of method `name`'s renamed constructor arguments
    (`frskd`: `{"alpha": "self_kd_weight", ...}`), which still work, with a
    warning (`kerakd.methods.base.renamed_arguments`)."""
    return dict(_method_entry(name)["renamed"])


def renamed_flags():
    """`{old flag: new flag}` of every registered method (`frskd_alpha` ->
    `frskd_self_kd_weight`): the old flags are deprecated aliases."""
    return {f"{name}_{old}": f"{name}_{new}" for name in available_methods()
            for old, new in renamed_method_arguments(name).items()}


def canonical_flag_name(name):
    """The current name of flag `name`: the new one for a deprecated alias
    (`"frskd_alpha"` -> `"frskd_self_kd_weight"`), else `name` itself.

    Runs recorded before a rename hold the old names in their `run.flags`;
    `flag_dict` names every value by this, so they compare equal to the same
    recipe spelled with the new names.
    """
    return renamed_flags().get(name, name)


def _define_method_flag(flag, kind, default, text, flag_values):
    kwargs = dict(default=default, help=text, flag_values=flag_values, module_name=__name__)
    if kind is bool:
        flags.DEFINE_boolean(flag, **kwargs)
    elif kind is int:
        flags.DEFINE_integer(flag, **kwargs)
    elif kind is float:
        flags.DEFINE_float(flag, **kwargs)
    elif kind is str:
        flags.DEFINE_string(flag, **kwargs)
    elif kind is list or isinstance(default, (list, tuple)):
        kwargs["default"] = None if default is None else [str(v) for v in default]
        flags.DEFINE_list(flag, **kwargs)
    else:
        kwargs["default"] = None if default is None else repr(default)
        kwargs["help"] += " (a Python literal)"
        flags.DEFINE_string(flag, **kwargs)


def _define_method_flags(flag_values):
    for name in available_methods():
        helps = {a: e["help"] for a, e in _method_entry(name)["arguments"].items()}
        kinds = method_argument_types(name)
        arguments = method_arguments(name)
        for argument, default in arguments.items():
            flag = f"{name}_{argument}"
            if flag in flag_values:
                raise ValueError(
                    f"Method '{name}' argument '{argument}' makes flag --{flag}, "
                    "which already exists; rename the method or the argument."
                )
            default = None if default is catalog.NO_DEFAULT else default
            _define_method_flag(flag, kinds[argument], default,
                                f"[{name}] {helps[argument]}", flag_values)
        # Old names stay flags of the same type, unset by default; parsing
        # moves their value to the new flag (`_apply_renamed_flags`).
        for old, new in renamed_method_arguments(name).items():
            default = arguments[new]
            kind = kinds[new]
            list_valued = isinstance(default, (list, tuple))
            _define_method_flag(
                f"{name}_{old}", list if list_valued else kind, None,
                f"[{name}] Deprecated: the old name of --{name}_{new}.", flag_values)


def _apply_renamed_flags(flag_values):
    """Moves the values of deprecated alias flags to their new flags, warning
    for each (a `run.flags` written before a rename reads the same)."""
    for old, new in renamed_flags().items():
        if old not in flag_values or not flag_values[old].present:
            continue
        if flag_values[new].present:
            raise flags.Error(
                f"--{old} and --{new} are both set; --{old} is the old name of "
                f"--{new}: keep --{new} only.")
        warnings.warn(f"--{old} is deprecated, use --{new} (same meaning).",
                      FutureWarning, stacklevel=3)
        flag_values[new].value = flag_values[old].value
        flag_values[new].present = flag_values[old].present
        flag_values[new].using_default_value = False
        flag_values[old].unparse()


# `kerakd-train --help`: the core flags by job, in this order.
HELP_GROUPS = {
    "model and data": ["student", "teacher", "dataset", "data_dir", "image_size", "augment",
                       "mix_alpha"],
    "schedule": ["epochs", "steps_per_epoch", "batch_size", "learning_rate", "lr_milestones",
                 "lr_decay", "warmup_epochs"],
    "optimizer": ["optimizer", "momentum", "nesterov", "weight_decay", "clip_grad_norm"],
    "method and taps": ["method", "student_taps", "teacher_taps"],
    "distribution": ["strategy", "tpu", "num_logical_cpus", "sync_batchnorm",
                     "mixed_precision", "jit_compile"],
    "output and reliability": ["model_dir", "seed", "deterministic", "nan_policy",
                               "max_skipped_share", "overwrite", "log_every_steps"],
}
HELP_FLAGS = ("--help", "-h", "--helpshort", "-help")


def _first_sentence(text):
    text = " ".join(text.split())
    end = re.search(r"\.\s+(?=[A-Z`-])", text)
    return text if end is None else text[:end.start() + 1]


def _help_line(flag, unset="(none)"):
    default = flag.default_as_str or unset
    return f"  --{flag.name}={default.strip(chr(39))}\n      {_first_sentence(flag.help)}"


def help_text(method=None):
    """`kerakd-train --help`: the core flags grouped by job, one line each,
    then the hyperparameters of `method` (a name, or `a+b`) when given."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    lines = ["Usage: kerakd-train --method=<method> --model_dir=<dir> [--flag=value ...]",
             "       kerakd-train --flagfile=configs/kd.flags",
             "Every flag also reads from a flagfile. --helpfull lists absl's own flags too."]
    for group, names in HELP_GROUPS.items():
        lines += ["", f"{group[0].upper()}{group[1:]}:"]
        lines += [_help_line(flag_values[name]) for name in names]
    owners = _method_flag_owner(flag_values)
    if method:
        for name in method_names(method):
            if name not in available_methods():
                lines += ["", f"--method={method}: '{name}' is not a registered method "
                              f"({', '.join(available_methods())})."]
                continue
            lines += ["", f"Method {name} (docs/methods/{name}.md):"]
            lines += [_help_line(flag_values[f], unset="(the method's preset)")
                      for f, (m, _) in owners.items() if m == name]
    else:
        lines += ["", "Pass --method=<method> with --help to list its hyperparameters "
                      "(--<method>_<argument>)."]
    return "\n".join(lines)


def help_method(argv):
    """The method a `--help` command line names (`--method=`, or in a flagfile), or None."""
    rest = [a for a in argv[1:] if a not in HELP_FLAGS]
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values["model_dir"].validators.clear()  # not needed to ask for help
    try:
        flag_values(["kerakd-train", *rest])
    except flags.Error:
        pass
    return flag_values["method"].value if flag_values["method"].present else None


def define_flags(flag_values=flags.FLAGS):
    """Defines every flag of `kerakd-train` in `flag_values`."""
    _define_core_flags(flag_values)
    _define_method_flags(flag_values)


def parse(argv):
    """A fresh `FlagValues` with every flag defined and `argv` parsed.

    Args:
        argv: a command line, program name first
            (`["kerakd-train", "--method=kd", ...]`); `--flagfile=` works.

    Raises:
        absl.flags.Error: an unknown flag or a bad value (the message names it,
            and the flagfile that sets an unknown flag).
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    parse_into(flag_values, argv)
    return flag_values


def parse_into(flag_values, argv):
    """Parses `argv` into `flag_values` (whose flags are defined); an unknown
    flag set in a flagfile names the file (absl alone does not). A deprecated
    alias (`--frskd_alpha`) sets its new flag, with a warning.

    Returns:
        The arguments left over, program name first.

    Raises:
        absl.flags.Error: an unknown flag (with the close names absl suggests),
            a bad value, or an alias set together with its new flag.
    """
    try:
        rest = flag_values(list(argv))
    except flags.UnrecognizedFlagError as error:
        flagfile = _flagfile_setting(error.flagname, argv)
        if flagfile is None:
            raise
        raise flags.Error(f"{flagfile}: {error}") from error
    _apply_renamed_flags(flag_values)
    return rest


def _flagfile_setting(flag_name, argv):
    """The flagfile in `argv` (or nested in one) that sets `--flag_name`, or None."""
    for arg in argv:
        if not arg.startswith("--flagfile="):
            continue
        path = arg[len("--flagfile="):]
        try:
            with open(path) as file:
                lines = [line.strip() for line in file]
        except OSError:
            continue  # absl has reported an unreadable flagfile already
        if any(re.match(rf"--(no)?{re.escape(flag_name)}(=|$)", line) for line in lines):
            return path
        nested = _flagfile_setting(flag_name, lines)
        if nested:
            return nested
    return None


def method_names(method):
    """The registered names in a `--method` value (`"fitnet+crd"` -> both)."""
    return [name.strip() for name in method.split("+")]


def _method_flag_owner(flag_values):
    """`{flag name: (method, argument)}` of every method flag."""
    owners = {}
    for name in available_methods():
        for argument in method_arguments(name):
            owners[f"{name}_{argument}"] = (name, argument)
    return {f: owner for f, owner in owners.items() if f in flag_values}


def _method_value(flag, default, kind):
    """A method flag's value in the type of the constructor's argument."""
    value = flag.value
    if isinstance(default, (list, tuple)):
        item_type = type(default[0]) if default else str
        value = type(default)(item_type(v) for v in value)
    elif kind not in (bool, int, float, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string
    return value


def method_hparams(flag_values):
    """`{method: {argument: value}}` of the method flags set on the command line.

    Unset flags are left out, so each method keeps its own defaults.
    """
    hparams = {name: {} for name in method_names(flag_values.method)}
    for flag, (name, argument) in _method_flag_owner(flag_values).items():
        if flag_values[flag].present and name in hparams:
            default = method_arguments(name)[argument]
            kind = method_argument_types(name)[argument]
            try:
                hparams[name][argument] = _method_value(flag_values[flag], default, kind)
            except (TypeError, ValueError) as error:
                raise app.UsageError(f"--{flag}: {error}") from error
    return hparams


def parse_taps(values):
    """A `--student_taps`/`--teacher_taps` list as the Distiller takes it.

    `["stages"]` -> `"stages"` (a tap kind); `["a", "b"]` -> a list of layer
    names; `["features:a", "embed:b"]` -> `{"features": ["a"], "embed": ["b"]}`.
    """
    if not values:
        return None
    if any(":" in v for v in values):
        by_role = {}
        for value in values:
            role, sep, layer = value.partition(":")
            if not sep or not role or not layer:
                raise ValueError(f"'{value}' is not role:layer; write every item so.")
            by_role.setdefault(role, []).append(layer)
        return by_role
    if len(values) == 1 and values[0] in catalog.current()["tap_kinds"]:
        return values[0]
    return list(values)


def lr_milestones(flag_values):
    """`--lr_milestones` as increasing ints in (0, epochs)."""
    try:
        milestones = [int(m) for m in flag_values.lr_milestones]
    except ValueError as error:
        raise app.UsageError(
            f"--lr_milestones={','.join(flag_values.lr_milestones)}: give epochs "
            "as whole numbers, e.g. 150,180,210."
        ) from error
    if milestones != sorted(set(milestones)) or any(
            not 0 < m < flag_values.epochs for m in milestones):
        raise app.UsageError(
            f"--lr_milestones={','.join(map(str, milestones))} must be increasing "
            f"epochs between 1 and --epochs - 1 ({flag_values.epochs - 1}); pass "
            "--lr_milestones= (empty) for a constant learning rate."
        )
    return milestones


def requires_teacher(method):
    """Whether `--method` (possibly `a+b`) distills from a teacher."""
    return any(_method_entry(n)["requires_teacher"] for n in method_names(method))


def check_flags(flag_values):
    """Checks flag combinations before any work; reads no file.

    Raises:
        absl.app.UsageError: naming the offending flag and the fix.
    """
    fv = flag_values
    for name in method_names(fv.method):
        try:
            _method_entry(name)
        except ValueError as error:
            raise app.UsageError(f"--method={fv.method}: {error}") from None
    chosen = method_names(fv.method)
    for flag, (name, _) in sorted(_method_flag_owner(fv).items()):
        if fv[flag].present and name not in chosen:
            raise app.UsageError(
                f"--{flag} is a flag of method '{name}', but --method={fv.method}. "
                f"Remove it, or use --method={name}."
            )
    method_hparams(fv)
    zoo = catalog.current()["models"]
    if fv.student not in zoo:
        raise app.UsageError(f"--student={fv.student}: not a zoo model. Available: {zoo}.")
    try:
        check_teacher(f"--method={fv.method}", requires_teacher(fv.method),
                             bool(fv.teacher), "--teacher")
    except ValueError as error:
        hint = "" if fv.teacher else (" Train one with --method=none: its student.keras "
                                      "is the teacher.")
        raise app.UsageError(f"{error}{hint}") from None
    if fv.teacher_taps and not fv.teacher:
        raise app.UsageError("--teacher_taps is set but there is no --teacher.")
    for side in ("student_taps", "teacher_taps"):
        try:
            parse_taps(fv[side].value)
        except ValueError as error:
            raise app.UsageError(f"--{side}: {error}") from None
    lr_milestones(fv)
    if fv.warmup_epochs >= fv.epochs:
        raise app.UsageError(
            f"--warmup_epochs={fv.warmup_epochs} must be smaller than --epochs={fv.epochs}."
        )
    for flag in ("momentum", "nesterov"):
        if fv[flag].present and fv.optimizer != "sgd":
            raise app.UsageError(
                f"--{flag} applies to --optimizer=sgd only (got --optimizer={fv.optimizer})."
            )
    if fv["mix_alpha"].present and fv.augment not in ("mixup", "cutmix"):
        raise app.UsageError(
            f"--mix_alpha applies to --augment=mixup or cutmix (got --augment={fv.augment})."
        )
    if fv.deterministic and fv.augment in ("mixup", "cutmix"):
        raise app.UsageError(
            f"--deterministic cannot make --augment={fv.augment} repeatable (Keras's "
            "mixing layers draw from a per-process seed state). Use --augment="
            "standard or none, or drop --deterministic."
        )
    if fv.num_logical_cpus and fv.strategy == "default":
        raise app.UsageError(
            "--num_logical_cpus splits the CPU for a distribution strategy: add "
            "--strategy=mirrored, or remove --num_logical_cpus."
        )
    if fv["tpu"].present and fv.strategy != "tpu":
        raise app.UsageError(
            f"--tpu={fv.tpu} names a TPU for --strategy=tpu (got --strategy="
            f"{fv.strategy}): add --strategy=tpu, or remove --tpu."
        )
    problem = dataset_name_problem(fv.dataset)
    if problem:
        raise app.UsageError(f"--dataset={fv.dataset}: {problem}")
    if fv["max_skipped_share"].present and fv.nan_policy != "skip_batch":
        raise app.UsageError(
            f"--max_skipped_share applies to --nan_policy=skip_batch (got "
            f"--nan_policy={fv.nan_policy}): add --nan_policy=skip_batch, or remove "
            "--max_skipped_share."
        )
    if fv.sync_batchnorm and fv.strategy == "default":
        raise app.UsageError(
            "--sync_batchnorm synchronizes BatchNorm across replicas, but "
            "--strategy=default runs one: add --strategy=mirrored or multi_worker, "
            "or remove --sync_batchnorm."
        )


def check_files(flag_values):
    """Checks the `--teacher` file, that `--model_dir` can be a directory, and
    that a Fashion-MNIST `--data_dir` holds the IDX files (for other datasets
    `--data_dir` may be a new tfds directory).

    Raises:
        absl.app.UsageError: naming the flag.
    """
    _check_model_dir(flag_values.model_dir)
    if flag_values.dataset == "fashion_mnist" and flag_values.data_dir:
        problem = dataset_names.fashion_mnist_dir_problem(flag_values.data_dir)
        if problem:
            raise app.UsageError(f"--data_dir={flag_values.data_dir} {problem}")
    teacher = flag_values.teacher
    if teacher and not os.path.isfile(teacher):
        raise app.UsageError(
            f"--teacher={teacher}: no such file. Pass a model saved as .keras, e.g. "
            "runs/<teacher run>/student.keras."
        )
    if teacher and not teacher.endswith(".keras"):
        raise app.UsageError(f"--teacher={teacher}: expected a .keras file.")


def dataset_name_problem(name):
    """What is wrong with a `--dataset` name (with the closest known name), or
    None if it is one kerakd reads."""
    if name in dataset_names.DATASETS or (
            name.partition(":")[0] in ("tfds", "folder") and name.partition(":")[2]):
        return None
    return dataset_names.unknown_dataset_message(name)


def _check_model_dir(model_dir):
    """Raises a UsageError if `--model_dir` is a file, or lies under one."""
    path = os.path.abspath(model_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if os.path.isdir(path):
        return
    what = "is a file" if path == os.path.abspath(model_dir) else f"lies under the file {path}"
    raise app.UsageError(
        f"--model_dir={model_dir} {what}, not a directory. Pass a new or existing "
        "directory (it receives student.keras, checkpoints/, logs/, ...)."
    )


def flag_dict(flag_values):
    """`{name: value}` of kerakd's flags, but the other methods' (for results.json).

    Every value is named by `canonical_flag_name`: a deprecated alias that is
    set gives its value to the new name, and unset aliases are left out, so a
    run recorded under old flag names compares equal to the same recipe.

    A method argument whose default is None, resolved by the method (`kd`'s
    `kd_weight`: 0.9, or 9 with logit standardisation), has the value the
    method resolved it to, so that runs of the same recipe compare equal
    however it was spelled.
    """
    owners = _method_flag_owner(flag_values)
    renamed = renamed_flags()
    chosen = method_names(flag_values.method)
    values, aliases = {}, {}
    for f in flag_values.get_flags_for_module(__name__):
        if f.name in renamed:
            if f.present:
                aliases[renamed[f.name]] = f.value
        elif f.name not in owners or owners[f.name][0] in chosen:
            values[f.name] = f.value
    values.update((name, value) for name, value in aliases.items() if name in values)
    unresolved = [n for n, v in values.items() if v is None and n in owners]
    if unresolved:
        from kerakd import methods  # TensorFlow: only to write a run's results


        hparams = method_hparams(flag_values)
        configs = {}
        for name in unresolved:
            method, argument = owners[name]
            if method not in configs:
                try:
                    configs[method] = methods.get(method, **hparams[method]).get_config()
                except (TypeError, ValueError):
                    configs[method] = {}  # bad values: check_flags reports them
            values[name] = configs[method].get(argument)
    return values


def flagfile_lines(flag_values):
    """The kerakd flags that differ from their defaults, as sorted flagfile lines.

    `--overwrite` is left out: it acts on a directory once, and a flagfile
    that kept it would move its own run aside instead of resuming it. So are
    deprecated aliases: parsing gave their values to the new flags.
    """
    renamed = renamed_flags()
    return sorted(
        f.serialize() for f in flag_values.get_flags_for_module(__name__)
        if f.value != f.default and f.name != "overwrite" and f.name not in renamed
    )
