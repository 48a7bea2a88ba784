"""The CPU settings applied at import: which variables, when, and the switch that turns them off."""
import os
import subprocess
import sys

from ppcls_ext.cpu_env import SWITCH, cpu_vendor, tune_cpu_environment


def test_amd_gets_mkl_avx2_kernels():
    environ = {}
    notes = tune_cpu_environment(environ, vendor="AuthenticAMD")
    assert environ == {"MKL_DEBUG_CPU_TYPE": "5"}
    assert len(notes) == 1 and "MKL_DEBUG_CPU_TYPE=5" in notes[0] and SWITCH in notes[0]


def test_intel_and_unknown_cpus_are_left_alone():
    for vendor in ("GenuineIntel", None):
        environ = {}
        assert tune_cpu_environment(environ, vendor=vendor or "") == []
        assert environ == {}


def test_a_value_the_user_set_is_kept():
    environ = {"MKL_DEBUG_CPU_TYPE": "4"}
    assert tune_cpu_environment(environ, vendor="AuthenticAMD") == []
    assert environ == {"MKL_DEBUG_CPU_TYPE": "4"}


def test_the_switch_turns_tuning_off():
    for value in ("0", "off", "False"):
        environ = {SWITCH: value}
        notes = tune_cpu_environment(environ, vendor="AuthenticAMD")
        assert environ == {SWITCH: value}
        assert notes == [f"CPU tuning off ({SWITCH}={value})"]


def test_vendor_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n")
    assert cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    assert cpu_vendor(str(tmp_path / "missing")) is None


def test_importing_the_package_applies_it():
    code = ("import sys, os; import ppcls_ext; from ppcls_ext import cpu_env; "
            "print(os.environ.get('MKL_DEBUG_CPU_TYPE'), cpu_env.APPLIED)")
    environ = {k: v for k, v in os.environ.items() if k not in ("MKL_DEBUG_CPU_TYPE", SWITCH)}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout
    expected = "5" if cpu_vendor() == "AuthenticAMD" else "None"
    assert out.split()[0] == expected
    off = subprocess.run([sys.executable, "-c", code], env={**environ, SWITCH: "0"}, capture_output=True, text=True,
                         check=True).stdout
    assert off.split()[0] == "None" and "CPU tuning off" in off
