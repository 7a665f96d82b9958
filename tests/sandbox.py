"""Run a command under the seccomp rules of the systemd units (python tests/sandbox.py CMD...).

MemoryDenyWriteExecute= as systemd 252 builds it (src/shared/seccomp-util.c): mmap asking
for writable and executable memory, mprotect/pkey_mprotect adding execute, and shmat with
SHM_EXEC fail with EPERM. With STORYBOT_DENY="@privileged @resources", the system calls
of those groups (as `systemd-analyze syscall-filter` lists them) fail with EPERM as well,
as SystemCallFilter=~... with SystemCallErrorNumber=EPERM makes them. The rules hold for
the command and everything it starts (no_new_privs, inherited across exec).
"""

import ctypes
import mmap
import os
import subprocess
import sys


class _Compare(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_ALLOW = 0x7FFF0000  # SCMP_ACT_ALLOW
_EPERM = 0x00050000 | 1  # SCMP_ACT_ERRNO(EPERM)
_MASKED_EQ = 7  # SCMP_CMP_MASKED_EQ
_SHM_EXEC = 0o100000


def _group(name: str) -> list[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                         capture_output=True, text=True, check=True).stdout
    calls = []
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line.startswith("@"):
            calls += _group(line)
        elif line and not line.startswith("#"):
            calls.append(line)
    return calls


def confine(deny_groups: list[str]) -> None:
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_Compare)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_ALLOW)

    def refuse(call: str, arg: int | None = None, bits: int = 0) -> None:
        number = lib.seccomp_syscall_resolve_name(call.encode())
        if number < 0:
            return  # not a system call of this architecture
        compare = (_Compare * 1)(_Compare(arg, _MASKED_EQ, bits, bits)) if arg is not None else None
        if lib.seccomp_rule_add_array(ctx, _EPERM, number, 0 if arg is None else 1, compare):
            raise OSError(f"seccomp rule for {call} refused")

    refuse("mmap", 2, mmap.PROT_WRITE | mmap.PROT_EXEC)
    refuse("mprotect", 2, mmap.PROT_EXEC)
    refuse("pkey_mprotect", 2, mmap.PROT_EXEC)
    refuse("shmat", 2, _SHM_EXEC)
    for group in deny_groups:
        for call in _group(group):
            refuse(call)
    if lib.seccomp_load(ctx):
        raise OSError("seccomp_load failed")


if __name__ == "__main__":
    confine(os.environ.get("STORYBOT_DENY", "").split())
    try:  # the rules are in force: writable and executable memory is refused
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("sandbox: W+X memory was allowed")
    except PermissionError:
        pass
    os.execvp(sys.argv[1], sys.argv[1:])
