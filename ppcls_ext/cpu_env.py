"""CPU settings that measurably pay on the machines we run on, applied by the tools unless turned off.

Must run before Paddle is imported, as MKL reads its environment when Paddle loads it: `import ppcls_ext`
applies it first thing, before importing Paddle.

- On AMD CPUs, the MKL that Paddle bundles picks slow generic kernels; `MKL_DEBUG_CPU_TYPE=5` makes it
  use its AVX2 kernels (EfficientNetB0 dygraph forward at batch 4: 1.28x faster, median of 5 processes
  each; matrix products up to ~3x). Not set if the user has set it. Setting it after Paddle has loaded
  MKL has an unreliable effect, hence "before".

`PPCLS_EXT_CPU_TUNING=0` turns all of this off.
"""
from __future__ import annotations

import os
import sys
from typing import List, MutableMapping, Optional

SWITCH = "PPCLS_EXT_CPU_TUNING"
#: what `apply` set in this process, one line each, for the tools to log
APPLIED: List[str] = []


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The `vendor_id` of the first CPU (e.g. AuthenticAMD, GenuineIntel), or None where unknown."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def tune_cpu_environment(environ: Optional[MutableMapping[str, str]] = None, vendor: Optional[str] = None) -> List[str]:
    """Set the environment variables that pay on this CPU in `environ` (default: this process's);
    returns one line per setting made, for the log."""
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return [f"CPU tuning off ({SWITCH}={environ[SWITCH]})"]
    vendor = cpu_vendor() if vendor is None else vendor
    notes = []
    if vendor == "AuthenticAMD" and "MKL_DEBUG_CPU_TYPE" not in environ:
        environ["MKL_DEBUG_CPU_TYPE"] = "5"
        notes.append(f"AMD CPU: set MKL_DEBUG_CPU_TYPE=5 so that MKL uses its AVX2 kernels ({SWITCH}=0 to turn off)")
    return notes


def apply() -> List[str]:
    """Tune this process's environment once (`import ppcls_ext` calls this); returns the lines to log."""
    if not APPLIED:
        notes = tune_cpu_environment()
        if notes and "paddle" in sys.modules and not notes[0].startswith("CPU tuning off"):
            notes.append("Paddle was imported before ppcls_ext, so MKL may not see these; import ppcls_ext first")
        APPLIED.extend(notes or ["no CPU settings needed"])
    return APPLIED
