"""The directory of a `kerakd-train` run (`--model_dir`) and who may write it.

A run holds its directory's lock (`take_lock`), then claims it (`claim`): a
new run, or the resumption of a killed run of the same flags (compared by
`flag_changes` against `run.flags`). A finished run, or a killed run of other
flags, is refused; `--overwrite` moves it aside, never deletes it. What a run
writes there: `run.flags`, `checkpoints/` (`kerakd.checkpoint`), `best.keras`,
`student.keras`, `logs/` and, when it ends, `results.json`.
"""

import fcntl
import os
import socket
import time

from absl import app

from kerakd import flags as kerakd_flags
from kerakd.checkpoint import read_checkpoint

RESULTS = "results.json"
RUN_FLAGS = "run.flags"
# Held (flock) by the run writing the directory; holds its PID and host.
LOCK = "run.lock"
# Flags a resumed run may change: where it runs, and how it treats NaN
# batches (the way on after a run stopped on one), and what it prints.
RESUMABLE_CHANGES = ("model_dir", "overwrite", "nan_policy", "max_skipped_share",
                     "log_every_steps")


def worker_dir(model_dir, strategy):
    """`model_dir`, or `model_dir/workers/<task>` for a non-chief worker, so
    that workers of one run never write the same file.

    Args:
        model_dir: `--model_dir`.
        strategy: the run's `tf.distribute` strategy.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return model_dir
    has_chief = "chief" in resolver.cluster_spec().jobs
    if task_type == "chief" or (task_type == "worker" and resolver.task_id == 0
                                and not has_chief):
        return model_dir
    return os.path.join(model_dir, "workers", f"{task_type}{resolver.task_id}")


def _move_aside(model_dir):
    """Moves the run in `model_dir` to `<model_dir>.replaced-<time>` (all but
    this run's lock); returns the new name."""
    moved = f"{os.path.normpath(model_dir)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(moved)
    for name in _run_files(model_dir):
        os.rename(os.path.join(model_dir, name), os.path.join(moved, name))
    return moved


def _run_files(model_dir):
    """The entries of `model_dir` but its lock file."""
    return [n for n in os.listdir(model_dir) if n != LOCK]


def _lock_owner(fd):
    """The `PID host` text a lock file holds (`"unknown"` if empty)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "unknown"


def _describe_owner(owner):
    pid, _, host = owner.partition(" ")
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _in_use_error(model_dir, owner):
    return app.UsageError(
        f"--model_dir={model_dir} is in use by another kerakd-train run "
        f"({_describe_owner(owner)}, which holds {os.path.join(model_dir, LOCK)}). Wait "
        "for it to end (or stop it), or use another --model_dir."
    )


def check_not_in_use(model_dir):
    """Refuses `model_dir` early if a live run holds its lock; takes nothing.

    Args:
        model_dir: the run's directory (it may not exist yet).

    Raises:
        absl.app.UsageError: naming the other run's PID.
    """
    try:
        fd = os.open(os.path.join(model_dir, LOCK), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use_error(model_dir, _lock_owner(fd)) from None
    finally:
        os.close(fd)


def take_lock(model_dir):
    """Takes the exclusive lock of `model_dir` (creating it): an advisory
    `flock` on `model_dir/run.lock`, which holds this process's PID and
    host. The kernel drops the lock when the process ends, even on SIGKILL,
    so a lock left by a dead run is taken over (with a message).

    Args:
        model_dir: the run's directory.

    Returns:
        The lock's file descriptor, for `release_lock`.

    Raises:
        absl.app.UsageError: another live run holds the lock (naming its PID).
    """
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise _in_use_error(model_dir, owner) from None
        try:  # a run that ended just now may have removed the file we locked
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    left = os.fstat(fd).st_size and _lock_owner(fd)
    if left:
        print(f"kerakd-train: {path} was left by {_describe_owner(left)}, which no "
              "longer runs; taking it over.")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def release_lock(model_dir, fd):
    """Removes the lock `take_lock` took (nothing if `fd` is None).

    Args:
        model_dir: the run's directory.
        fd: what `take_lock` returned, or None.
    """
    if fd is None:
        return
    try:
        os.remove(os.path.join(model_dir, LOCK))
    except FileNotFoundError:
        pass
    os.close(fd)


def claim(model_dir, flag_values):
    """Takes `model_dir` for this run: a new run, or the resumption of a killed one.

    A finished run, or a killed run of other flags, is refused; with
    `--overwrite` it is moved aside (never deleted) and the run starts over.
    The run's flags are then written to `run.flags`.

    Call it holding the lock of `model_dir` (`take_lock`).

    Args:
        model_dir: the run's directory.
        flag_values: the run's parsed flags.

    Returns:
        The epoch a killed run resumes after (0 for a new run).

    Raises:
        absl.app.UsageError: the directory holds a finished run, or a killed
            run of other flags (naming them).
    """
    fv = flag_values
    if fv.overwrite and os.path.isdir(model_dir) and _run_files(model_dir):
        print(f"kerakd-train: --overwrite: moved the run in {model_dir} to "
              f"{_move_aside(model_dir)}.")
    if os.path.exists(os.path.join(model_dir, RESULTS)):
        raise app.UsageError(
            f"--model_dir={model_dir} holds a finished run ({RESULTS}). Use a new "
            "--model_dir, or pass --overwrite to move that run aside and train again."
        )
    flagfile = os.path.join(model_dir, RUN_FLAGS)
    checkpoint = read_checkpoint(model_dir)
    resume_epoch = 0
    if checkpoint:
        resume_epoch = checkpoint["epoch"]
        changed = flag_changes(model_dir, fv)
        if changed:
            details = "; ".join(changed)
            raise app.UsageError(
                f"--model_dir={model_dir} holds a run stopped after epoch "
                f"{resume_epoch}, started with other flags ({details}). Resume it "
                f"with --flagfile={flagfile}, use a new --model_dir, or pass "
                "--overwrite to move that run aside and start over."
            )
    else:
        os.makedirs(model_dir, exist_ok=True)
        # A run killed before its first checkpoint starts over.
        best = os.path.join(model_dir, "best.keras")
        if os.path.exists(best):
            os.remove(best)
    with open(flagfile, "w") as file:
        file.write("\n".join(kerakd_flags.flagfile_lines(fv)) + "\n")
    return resume_epoch


def flag_changes(model_dir, flag_values):
    """How `flag_values` differ from the flags of the run in `model_dir`.

    Args:
        model_dir: a run's directory (it holds `run.flags`).
        flag_values: parsed flags (`kerakd.flags.parse`).

    Returns:
        `["--name: before -> now", ...]`, sorted; empty when the run used
        the same flags (those of `RESUMABLE_CHANGES` aside).

    Example:

    >>> import os, tempfile
    >>> import kerakd.flags
    >>> from kerakd.run_directory import flag_changes
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "run.flags"), "w") as file:
    ...     _ = file.write(f"--method=none\\n--epochs=10\\n--model_dir={run}\\n")
    >>> again = kerakd.flags.parse(["kerakd-train", "--method=none", "--epochs=10",
    ...                             f"--model_dir={run}"])
    >>> flag_changes(run, again)
    []
    >>> longer = kerakd.flags.parse(["kerakd-train", "--method=none", "--epochs=20",
    ...                              f"--model_dir={run}"])
    >>> flag_changes(run, longer)
    ['--epochs: 10 -> 20']
    """
    before = kerakd_flags.flag_dict(kerakd_flags.parse(
        ["kerakd-train", f"--flagfile={os.path.join(model_dir, RUN_FLAGS)}"]))
    now = kerakd_flags.flag_dict(flag_values)
    return [f"--{n}: {before.get(n)} -> {now[n]}" for n in sorted(now)
            if n not in RESUMABLE_CHANGES and before.get(n) != now[n]]
