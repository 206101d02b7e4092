"""Several command lines of the benchmark scripts in one process (a smoke test's).

    python tests/benchmark_runs.py CALLS.json OUT.json

CALLS is a list of `{"script": "accuracy" | "sweep", "args": [...], "files": [...]}`.
Each call runs as `python benchmarks/<script>.py ARGS` does: `absl.app.run`
of the script's `main` on those arguments, every flag parsed afresh (the
values of the call before are unparsed first); a `SystemExit` gives its exit
status, a message or an uncaught error goes to stderr with status 1, as the
interpreter would. One process instead of one per call: a benchmark smoke
test makes several calls, each of which would start TensorFlow again.

OUT gets, per call, `returncode`, `stdout`, `stderr` and, for each path of
its "files" that exists right after the call, `{"size": bytes}` plus the
`"text"` of a .md, .json or .flags file (later calls may rewrite them).
"""

import contextlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)  # as for a script run from benchmarks/

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import accuracy  # noqa: E402
import sweep  # noqa: E402

SCRIPTS = {"accuracy": accuracy, "sweep": sweep}
TEXT = (".md", ".json", ".flags")


def call(script, args):
    """`(returncode, stdout, stderr)` of one command line."""
    module = SCRIPTS[script]
    flags.FLAGS.unparse_flags()
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            app.run(module.main, argv=[module.__file__, *args])
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
                returncode = 1
            else:
                returncode = exit_.code or 0
        except Exception:  # uncaught: the traceback, status 1
            traceback.print_exc()
            returncode = 1
    return returncode, stdout.getvalue(), stderr.getvalue()


def files(paths):
    found = {}
    for path in paths:
        if os.path.exists(path):
            found[path] = {"size": os.path.getsize(path)}
            if path.endswith(TEXT):
                with open(path) as file:
                    found[path]["text"] = file.read()
    return found


def main():
    calls_path, out_path = sys.argv[1:3]
    with open(calls_path) as file:
        calls = json.load(file)
    results = []
    for spec in calls:
        returncode, stdout, stderr = call(spec["script"], spec["args"])
        results.append({"returncode": returncode, "stdout": stdout, "stderr": stderr,
                        "files": files(spec.get("files", []))})
        with open(out_path, "w") as file:  # what has run so far, should a call hang
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
