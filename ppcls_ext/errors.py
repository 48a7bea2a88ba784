"""The one error hierarchy of ppcls_ext: every exception it raises on purpose derives from `PpclsExtError`,
and its category says what a command line does with it (`exit_status`).

    PpclsExtError (Exception)                        base; exit_status 1
    ├── UserError                                    exit status 2: one line `error: ...` on stderr, no traceback
    │   ├── config.ConfigError (ValueError)          a config file, key, value or -o override; a path or file named in one
    │   ├── data.dataset.DataError (ValueError)      image data that stops a run (unreadable in evaluation, failing in training)
    │   ├── registry.UnknownModelError (KeyError, ValueError)   a model name not in the zoo
    │   ├── weights.IncompatibleWeightsError (ValueError)       weights that do not fit the model, or cannot be read
    │   ├── weights.WeightsDownloadError (OSError)   a URL that cannot be fetched, or fails its checksum
    │   ├── convert.layouts.LayoutError (ValueError)            a PyTorch checkpoint of an unknown key layout
    │   ├── convert.torch_file.TorchFileError (ValueError)      a file that is no PyTorch / safetensors checkpoint
    │   ├── safe_pickle.PickleDataError (pickle.UnpicklingError) a pickle that cannot be read as data
    │   │   └── safe_pickle.UnsafePickleError        a pickle refused (it asks for code, or exceeds the reader's limits)
    │   ├── output_paths.WriteError (OSError)        an output that cannot be written whole (disk full, size limit, read-only)
    │   ├── inference.classifier.ExportError (ValueError)       an export that cannot be loaded
    │   ├── inference.options.DeploymentError (RuntimeError)    a deployment request this installation cannot serve
    │   │   └── inference.trt_runtime.TensorRTError  TensorRT cannot be loaded, build an engine or read a cached one
    │   └── quant.post_static.BudgetNotMet           int8 cannot be brought within the accuracy budget
    ├── NonFiniteError (RuntimeError)                exit status 3: NaN or Inf in a training loss, weights or outputs
    └── InternalError                                exit status 1 with Python's traceback: a bug, or a library that no
        │                                            longer behaves as this code expects (report it)
        ├── output_paths.IncompleteWrite (OSError)   never reaches a command line: `output_paths.writing` makes it a WriteError
        └── models.declaration.DeclarationError (ValueError)    a model family's row is incomplete or invalid (on import)

Every class keeps the built-in base it had before this hierarchy, so `except ValueError`, `except KeyError`
and `except OSError` in user code catch what they caught before.

Each command line (`ppcls_ext.cli`) catches `REPORTED` in one `except` clause, prints the error's one line
and exits with `exit_status(error)`. Python's own FileNotFoundError (a path that does not exist) is reported
there too, as a user error. Outside the hierarchy: `interrupts.Interrupted` (a BaseException, like
KeyboardInterrupt), which stops a tool with exit status 130 (Ctrl-C) or 143 (SIGTERM).
"""
from __future__ import annotations

#: exit status of a user error (Python's argparse uses 2 for a bad command line too)
USER_ERROR_EXIT_STATUS = 2


class PpclsExtError(Exception):
    """Base of every error ppcls_ext raises on purpose; `exit_status` is what a command line exits with."""

    exit_status = 1


class UserError(PpclsExtError):
    """The input (config, data, weights, an export, a deployment request) or an output location is at fault;
    the message is one line naming the file, key or value and what was expected."""

    exit_status = USER_ERROR_EXIT_STATUS


class NonFiniteError(PpclsExtError, RuntimeError):
    """Training diverged, or weights or model outputs are NaN/Inf; the message is one line for the user."""

    exit_status = 3


class InternalError(PpclsExtError):
    """A bug, or a library that no longer behaves as this code expects: not the user's to fix, so command
    lines let it through with its traceback (exit status 1)."""


#: the errors a command line reports in one line; anything else keeps its traceback
REPORTED = (UserError, NonFiniteError, FileNotFoundError)


def exit_status(error: BaseException) -> int:
    """The exit status a command line ends with for an error it reports: the class's, or 2 (a user error)
    for Python's own types (FileNotFoundError)."""
    return getattr(error, "exit_status", USER_ERROR_EXIT_STATUS)
