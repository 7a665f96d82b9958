"""cffi build script: compiles the native library into the extension robot._native."""
import importlib.util
import os
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
HEADER = NATIVE / "include" / "storybot.h"
# Internal entry points for tests only (kernel checks); kept out of the public header.
TESTHOOKS = NATIVE / "src" / "testhooks.h"

# setuptools runs this file as a script, where the robot package is not importable:
# the header-to-cdef step that the ABI mode shares is loaded by its path.
_spec = importlib.util.spec_from_file_location("_cdef", ROOT / "robot" / "_cdef.py")
_cdef = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cdef)

ffibuilder = FFI()
ffibuilder.cdef(_cdef.cdef_from_header(HEADER))
ffibuilder.cdef(_cdef.cdef_from_header(TESTHOOKS))
ffibuilder.set_source(
    "robot._native",
    '#include "storybot.h"\n#include "testhooks.h"',
    # Paths relative to the project root, where setuptools runs this script.
    sources=sorted(os.path.relpath(p, ROOT) for p in (NATIVE / "src").glob("*.c")),
    include_dirs=[os.path.relpath(NATIVE / d, ROOT) for d in ("include", "src")],
    extra_compile_args=[
        "-std=c11", "-D_DEFAULT_SOURCE", "-D_POSIX_C_SOURCE=200809L",
        "-O3", "-ffp-contract=off",  # keep the reference's rounding: no fused multiply-add
    ],
    libraries=["m", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
