"""cffi build script: compiles the native library into the extension robot._native."""
import os
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
HEADER = NATIVE / "include" / "storybot.h"
# Internal entry points for tests only (kernel checks); kept out of the public header.
TESTHOOKS = NATIVE / "src" / "testhooks.h"


def _cdef(header: Path = HEADER) -> str:
    """The header minus what cdef cannot parse (preprocessor lines, attributes)."""
    text = header.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = [
        ln for ln in text.splitlines()
        if not ln.lstrip().startswith("#") and "extern \"C\"" not in ln and ln.strip() != "}"
    ]
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.cdef(_cdef(TESTHOOKS))
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
