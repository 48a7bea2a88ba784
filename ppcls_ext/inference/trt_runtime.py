"""Which TensorRT this process can use, and TensorRT failures named as such.

Two TensorRT installations meet in Paddle 3. Paddle Inference loads libnvinfer at run time (phi's dynload:
`GetTensorRtDsoHandle` -> `GetDsoHandleFromSearchPath(FLAGS_tensorrt_dir, "libnvinfer.so")`; when that fails
it raises PreconditionNotMet "The third-party dynamic library (libnvinfer.so) that Paddle depends on is not
configured correctly", and `paddle.inference.get_trt_runtime_version()` loads the library the same way); it
builds and deserializes the legacy route's engines and deserializes the PIR route's. `paddle.tensorrt.convert`
builds the PIR route's engines with the `tensorrt` Python wheel instead (python/paddle/tensorrt/converter.py:
`import tensorrt as trt`, `builder.build_serialized_network`). A serialized engine only deserializes in the
TensorRT version that built it (engine.cc `TensorRTEngine::Deserialize`: "Building TRT cuda engine failed when
deserializing engine info"), so the wheel has to be the version of the libnvinfer that Paddle loads.
"""
from __future__ import annotations

import contextlib
import re
from importlib import metadata
from typing import Iterator, Optional, Tuple

import paddle

from .options import DeploymentError


class TensorRTError(DeploymentError):
    """TensorRT cannot be loaded, cannot build an engine, or cannot read a cached one; the message says
    which, and what to do."""


def version_numbers(text: str) -> Tuple[int, ...]:
    """The leading dotted integers of a version string: "8.6.1.post1" -> (8, 6, 1), "10.0.1.6" -> (10, 0, 1, 6)."""
    numbers = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.group() != part:
            break
    return tuple(numbers)


def dotted(version: Tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def library_missing(error: BaseException) -> bool:
    text = str(error)
    return "libnvinfer" in text and ("not configured correctly" in text or "cannot open shared object" in text)


def runtime_version() -> Tuple[int, int, int]:
    """The version of the libnvinfer Paddle loads; a TensorRTError naming the library when it cannot be loaded."""
    try:
        return tuple(int(v) for v in paddle.inference.get_trt_runtime_version())  # type: ignore[return-value]
    except Exception as error:  # Paddle's enforce errors; a missing library is recognised by its message
        if library_missing(error):
            raise TensorRTError(library_message(error)) from error
        raise


def library_message(error: BaseException) -> str:
    compiled = dotted(tuple(paddle.inference.get_trt_compile_version()))
    detail = re.search(r"\(error code is ([^)]*)\)", str(error))
    return (f"TensorRT's library libnvinfer cannot be loaded ({detail.group(1) if detail else first_line(error)}): this "
            f"Paddle was compiled with TensorRT {compiled}; install that version and put its lib folder on "
            "LD_LIBRARY_PATH")


def wheel_version() -> Optional[str]:
    """The version of the installed `tensorrt` Python package (the distribution providing the module, read
    from its metadata without importing it), or None."""
    for name in metadata.packages_distributions().get("tensorrt", []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_wheel(runtime: Tuple[int, ...]) -> str:
    """The `tensorrt` wheel's version, when it is the TensorRT that Paddle loads (major.minor.patch);
    otherwise a TensorRTError saying which version to install."""
    wheel = wheel_version()
    wanted = dotted(tuple(runtime)[:3])
    if wheel is None:
        raise TensorRTError("TensorRT on a Paddle 3 export (inference.json) builds its engines with the tensorrt Python "
                            f"package, which is not installed: pip install tensorrt=={wanted} (the libnvinfer version "
                            "Paddle loads)")
    if version_numbers(wheel)[:3] != tuple(runtime)[:3]:
        raise TensorRTError(f"the tensorrt Python package is {wheel} but Paddle loads libnvinfer {wanted}: an engine "
                            f"built by one cannot be deserialized by the other; install tensorrt=={wanted}")
    return wheel


def first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def named_failure(error: BaseException, cache: str) -> Optional[str]:
    """What a TensorRT failure raised by Paddle is, in one line (None for other errors). The texts are
    Paddle's: dynamic_loader.cc (library), engine.cc `FreezeNetwork` "Build TensorRT cuda engine failed"
    and converter.py "Failed to build engine" (build), engine.cc `Deserialize` (cached engine),
    op_converter.h `ConvertBlockToTRTEngine` "some trt inputs dynamic shape info not set" (shape ranges)."""
    text = str(error)
    if library_missing(error):
        return library_message(error)
    if "deserializ" in text.lower() and "engine" in text:
        return (f"a cached TensorRT engine cannot be deserialized ({first_line(error)}); it was built by another "
                f"TensorRT, GPU or Paddle: delete {cache} and start again")
    if "Build TensorRT cuda engine failed" in text or "Failed to build engine" in text:
        return (f"TensorRT could not build an engine ({first_line(error)}); TensorRT's own log above says why "
                "(too small a workspace_size, an unsupported layer, no int8 scales)")
    if "dynamic shape info not set" in text:
        return f"TensorRT has no shape range for an engine input ({first_line(error)})"
    return None


@contextlib.contextmanager
def named_errors(cache: str) -> Iterator[None]:
    """Re-raise Paddle's TensorRT failures inside the block as TensorRTError with `named_failure`'s line."""
    try:
        yield
    except DeploymentError:
        raise
    except Exception as error:  # Paddle raises RuntimeError, SystemError, OSError... by enforce category
        reason = named_failure(error, cache)
        if reason is None:
            raise
        raise TensorRTError(reason) from error
