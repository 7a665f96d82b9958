"""The native kernel self-tests: every fp32 kernel set this CPU runs equals the portable
one bit for bit (matvec, attention scores and mix) and gives the C library's expf, and
every quantized set matches an integer reference; on the host, and for the RVV 1.0 and
XTheadVector builds under qemu when tools/riscv is set up (with the copy of glibc's
expf that RISC-V uses, on one float in 4099). On x86 the vector expf and that copy are
compared with the C library's on all 2^32 floats."""
from __future__ import annotations

import platform
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from test_riscv import riscv_env  # noqa: F401 (fixture)

PASSED = re.compile(r"^\d+ passed, 0 failed$", re.M)


def test_host_kernels():
    r = subprocess.run(["make", "-s", "-C", str(REPO / "native"), "ktest"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(PASSED.findall(r.stdout)) == 2, r.stdout
    assert re.search(r"^fp32 kernel sets: generic( avx2)?( avx512)?$", r.stdout, re.M), r.stdout


@pytest.mark.slow  # emulated riscv64 builds
@pytest.mark.parametrize("cc,qemu,name", [("RV_CC_CLANG", "QEMU_RVV", "rvv"),
                                          ("RV_CC_XTHEAD", "QEMU_C906", "xtheadvector")])
def test_riscv_kernels_under_qemu(cc, qemu, name, riscv_env, tmp_path):  # noqa: F811
    build = tmp_path / "build"  # under /tmp: visible to the GCC 14 chroot wrapper
    tests = [build / "kernels_test", build / "qkernels_test"]
    r = subprocess.run(["make", "-s", "-C", str(REPO / "native"), f"BUILD={build}",
                        f"CC={riscv_env[cc]}", *map(str, tests)], capture_output=True, text=True,
                       env=riscv_env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for test in tests:
        r = subprocess.run([*shlex.split(riscv_env[qemu]), str(test)], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert PASSED.search(r.stdout), r.stdout
    assert re.search(rf"^kernel sets: generic {name}$", r.stdout, re.M), r.stdout


@pytest.mark.slow  # all 2^32 floats: about a minute and a half
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the vector expf is x86's")
def test_vector_expf_and_the_copy_of_glibcs_equal_the_c_library_on_every_float():
    r = subprocess.run(["make", "-s", "-C", str(REPO / "native"), "build/kernels_test"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(REPO / "native" / "build" / "kernels_test"), "--all-floats"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vector expf: 0 of 4294967296 floats differ" in r.stdout, r.stdout
    assert "sb_expf_glibc: 0 of 4294967296 floats differ" in r.stdout, r.stdout
    flags = Path("/proc/cpuinfo").read_text().split()
    if "fma" in flags and "avx2" in flags:  # else the C library is all there is to compare
        assert "vector expf: in use" in r.stdout, r.stdout
