# storybot riscv64 toolchains and emulators.  Source it (after tools/riscv/setup.sh):
# shellcheck shell=bash
# (bash only: uses BASH_SOURCE and compgen)
#   . tools/riscv/env.sh
#   $RV_CC_CLANG -O2 -DUSE_RVV x.c -o x -lm && $QEMU_RVV -plugin "$INSNCOUNT_SO" ./x
# Every *_CC_* / QEMU_* variable is a command line meant to be word-split (use it
# unquoted); no path in it contains spaces as long as $HOME/$STORYBOT_CACHE has none.
#
# Linking, chosen so that every output runs under its emulator:
#   RV_CC_GCC    gcc 12, rv64gc (scalar)      dynamic glibc 2.36 -> run with $QEMU_RV
#   RV_CC_CLANG  clang 16, rv64gcv (RVV 1.0)  dynamic glibc 2.36 -> run with $QEMU_RVV
#                (uses Debian's cross gcc 12 crt files/libgcc and GNU ld; -fuse-ld=lld
#                 also works if lld-16 is installed)
#   RV_CC_XTHEAD gcc 14, rv64gc_xtheadvector  dynamic glibc 2.41 (trixie) -> $QEMU_C906,
#                which passes -L <trixie sysroot>; the T-Head qemu 6.0 runs it fine.
#                -static also works (and is what a Duo board without glibc needs).
#   RV_CC_ZIG    zig cc, riscv64-linux-musl   static musl by default -> $QEMU_RV or a board
# -L only matters for dynamic binaries; static ones ignore it.
#
# insncount plugin arguments differ by qemu: Debian 7.2 takes `-plugin $INSNCOUNT_SO`
# (or ...,vspec=1.0); the T-Head 6.0 qemu needs the arg= form, and XTheadVector code
# needs vspec=0.7: `-plugin $INSNCOUNT_SO,arg=vspec=0.7` (= $INSNCOUNT_C906_PLUGIN).

_rv_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export RV_CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/riscv
export RV_TRIXIE_ROOT=$RV_CACHE/trixie
export RV_VENV=$RV_CACHE/venv

export RV_CC_GCC="riscv64-linux-gnu-gcc-12 -march=rv64gc -mabi=lp64d"
export RV_CC_CLANG="clang-16 --target=riscv64-linux-gnu -march=rv64gcv -mabi=lp64d --gcc-toolchain=/usr"
export RV_CC_XTHEAD="$_rv_here/gcc14-xthead"
export RV_CC_ZIG="env ZIG_GLOBAL_CACHE_DIR=$RV_CACHE/zig-cache $RV_VENV/bin/python -m ziglang cc -target riscv64-linux-musl"

export QEMU_RV="/usr/bin/qemu-riscv64 -L /usr/riscv64-linux-gnu"
export QEMU_RVV="$QEMU_RV -cpu rv64,v=true,vlen=128,vext_spec=v1.0"
_rv_qc=$(compgen -G "$RV_VENV/lib/python3*/site-packages/qemu/qemu-riscv64" | head -1 || true)
export RV_XUANTIE_QEMU=${_rv_qc:-$RV_VENV/lib/python3/site-packages/qemu/qemu-riscv64}
export QEMU_C906="$RV_XUANTIE_QEMU -cpu c906fdv -L $RV_TRIXIE_ROOT/usr/riscv64-linux-gnu"

export INSNCOUNT_SO=$RV_CACHE/libinsncount.so
export INSNCOUNT_C906_PLUGIN="$INSNCOUNT_SO,arg=vspec=0.7"

if [[ ! -x "$RV_XUANTIE_QEMU" || ! -f "$INSNCOUNT_SO" || ! -d "$RV_TRIXIE_ROOT" ]]; then
    echo "tools/riscv/env.sh: environment incomplete in $RV_CACHE; run: bash tools/riscv/setup.sh" >&2
fi
unset _rv_here _rv_qc
