"""The cffi declarations of a C header, for both the API-mode build (_build.py) and the
ABI-mode fallback (_abi.py): the header minus what cdef cannot parse."""
import re
from pathlib import Path


def cdef_from_header(header: Path) -> str:
    """Drops comments, preprocessor lines and the C++ guard's braces."""
    text = re.sub(r"/\*.*?\*/", "", Path(header).read_text(), flags=re.S)
    lines = [
        ln for ln in text.splitlines()
        if not ln.lstrip().startswith("#") and 'extern "C"' not in ln and ln.strip() != "}"
    ]
    return "\n".join(lines)
