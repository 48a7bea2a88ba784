"""Runs several tool command lines in one process (one interpreter start instead of one per tool), each under
its own file-size limit, for test_failure_edges.py: `python tests/tool_runner.py STEPS.json RESULTS.json`.

STEPS.json: [{"tool": "train" | "eval" | "infer" | "export", "argv": [...], "fsize": bytes or null}, ...].
RESULTS.json: per step {"status", "stdout", "stderr"}; an exception escaping the tool's `main` (what a user
would see as a traceback) is recorded in "stderr" as its traceback, status null. The file-size limit is the
soft RLIMIT_FSIZE (the hard limit stays, so the next step can raise it again); Python ignores SIGXFSZ, so
a write past the limit fails with EFBIG instead of killing the process (set here too, to be explicit)."""
import contextlib
import io
import json
import resource
import signal
import sys
import traceback

from ppcls_ext.cli import main


def run_step(step: dict) -> dict:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    out, err = io.StringIO(), io.StringIO()
    status = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        resource.setrlimit(resource.RLIMIT_FSIZE, (step.get("fsize") or hard, hard))
        try:
            status = main(step["tool"], step["argv"])
        except BaseException:  # noqa: B902 - recorded for the test to fail on
            traceback.print_exc()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with open(sys.argv[1], encoding="utf-8") as f:
        steps = json.load(f)
    results = [run_step(step) for step in steps]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)
