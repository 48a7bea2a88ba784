"""Run PaddleClas's own tool scripts (tools/train.py, ...), unmodified, several in one interpreter.

    python tests/upstream_runner.py RUNS.json RESULTS.json [SITE_DIR]

RUNS.json is a list of {"tool": path, "argv": [...], "cwd": folder}; each tool runs as `__main__` with that
command line, as `python TOOL ARGV...` would run it, so that one Paddle import serves many runs. Each
result is {"ok", "seconds", "error"} (the last traceback line) and, for tools that build an `engine`,
{"model", "head_dropout"} (see `describe_model`), written as each run ends. Nothing here
imports ppcls_ext: the models and schedules must reach PaddleClas through ppcls_ext_hook, as for a user.
SITE_DIR, where given, is processed as Python's start-up processes site-packages (its `.pth` files run):
for a checkout that is used from PYTHONPATH rather than installed.
"""
import gc
import json
import os
import runpy
import site
import sys
import time
import traceback


def describe_model(namespace):
    """The class of the model a tool built (its `engine.model`) and the dropout rate of every sub-layer
    PaddleClas's progressive trainer ramps (class `Head`), after the run."""
    model = getattr(namespace.get("engine"), "model", None)
    if model is None:
        return {}
    heads = [layer._dropout.p for layer in model.sublayers(include_self=True)
             if type(layer).__name__ == "Head" and hasattr(layer, "_dropout")]
    return {"model": f"{type(model).__module__}.{type(model).__name__}", "head_dropout": heads}


def run_tool(tool, argv, cwd):
    """Run one tool as `__main__`; returns (ok, error line, what it built)."""
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [tool] + list(argv)
    os.chdir(cwd)
    try:
        return True, "", describe_model(runpy.run_path(tool, run_name="__main__"))
    except SystemExit as exit_:
        return exit_.code in (None, 0), "" if exit_.code in (None, 0) else f"SystemExit: {exit_.code}", {}
    except Exception as error:  # noqa: BLE001 - reported per run
        traceback.print_exc()
        return False, f"{type(error).__name__}: {error}", {}
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        gc.collect()


def main(runs_path, results_path, site_dir=None):
    if site_dir:
        site.addsitedir(site_dir)
    with open(runs_path, encoding="utf-8") as f:
        runs = json.load(f)
    results = []
    for run in runs:
        start = time.perf_counter()
        ok, error, built = run_tool(run["tool"], run["argv"], run["cwd"])
        results.append({"ok": ok, "seconds": round(time.perf_counter() - start, 2), "error": error, **built})
        print(f"[upstream_runner] {os.path.basename(run['tool'])} {' '.join(run['argv'][:2])}: "
              f"{'ok' if ok else error} ({results[-1]['seconds']} s)", flush=True)
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
