"""ABI-mode fallback: the same ffi/lib as robot._native, through ffi.dlopen of a prebuilt
libstorybot.so, for a Python that cannot load an extension compiled elsewhere (the board).

The library is STORYBOT_LIB, else robot/libstorybot.so beside this file (where the board
bundle puts it), else native/build/libstorybot.so of a checkout.
"""
import logging
import os
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent


def _first(*candidates):
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ImportError(f"storybot header or library not found (tried {', '.join(str(c) for c in candidates if c)})")


try:
    # The board bundle's: the header's types compiled by cffi at build time (out-of-line
    # ABI mode), so that the board never imports cffi's parser (~5 MiB, robot/dev/memory.py).
    from ._abi_ffi import ffi
except ImportError:
    from cffi import FFI

    from ._cdef import cdef_from_header

    ffi = FFI()
    ffi.cdef(cdef_from_header(_first(os.environ.get("STORYBOT_HEADER"), _HERE / "storybot.h",
                                     _HERE.parent / "native" / "include" / "storybot.h")))
_path = _first(os.environ.get("STORYBOT_LIB"), _HERE / "libstorybot.so",
               _HERE.parent / "native" / "build" / "libstorybot.so")
lib = ffi.dlopen(str(_path))
_LOGGER.debug("ABI mode: %s", _path)
