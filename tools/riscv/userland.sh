#!/usr/bin/env bash
# storybot: a riscv64 Debian trixie userland with python3 + python3-cffi, for running the
# board bundle under qemu-user (tests/test_board_emulated.py).  Debian 12, root.
#
#   bash tools/riscv/userland.sh        # idempotent: 0 s once its stamp matches
#   ROOT=$(bash tools/riscv/userland.sh --print-root)
#   qemu-riscv64-static -L "$ROOT" "$ROOT/usr/bin/python3" -c 'import cffi'
#
# The userland is ${STORYBOT_CACHE:-~/.cache/storybot}/riscv/userland-trixie (~150 MB).
# debootstrap --foreign only downloads and unpacks the base; its second stage would
# run riscv64 maintainer scripts, which needs binfmt_misc (absent in containers).  None
# of that is needed to run python3 under `qemu -L`: every .deb is unpacked with dpkg -x
# instead.  No maintainer script has run, so there are no .pyc files (Python writes
# them on first import) and no /etc/ld.so.cache (ld.so falls back to its default
# multiarch directories, which is where Debian puts every library python3 needs).
set -Eeuo pipefail

RV_CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/riscv
ROOT=$RV_CACHE/userland-trixie
MIRROR=${STORYBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAMP=$RV_CACHE/.stamp-userland
# bump to force a rebuild on machines that already have one
KEY="trixie riscv64 minbase python3 python3-cffi python3-ply dpkg-x v2"
APT_PKGS=(qemu-user-static debootstrap)

if [[ ${1:-} == --print-root ]]; then echo "$ROOT"; exit 0; fi

T0=$(date +%s)
log() { printf '[riscv-userland %3ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[riscv-userland] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, debootstrap)"

. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_ensure "${APT_PKGS[@]}"
QEMU=$(command -v qemu-riscv64-static) || die "qemu-riscv64-static is missing"

works() { # the userland's python3 parses a declaration with cffi (pycparser, ply) under qemu
    "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python3" -c 'import asyncio, cffi; cffi.FFI().cdef("int f(void);")' \
        2>/dev/null
}

if [[ -f $STAMP && $(cat "$STAMP") == "$KEY" ]] && works; then
    log "userland ($ROOT): already done"
    exit 0
fi

mkdir -p "$RV_CACHE"
TMP=$ROOT.tmp
rm -rf "$TMP"
log "debootstrap --foreign trixie riscv64 (minbase + python3, python3-cffi, python3-ply) into $TMP"
# python3-ply by name: pycparser depends on the virtual python3-ply-lex-3.10 and
# python3-ply-yacc-3.10, which debootstrap does not resolve
debootstrap --arch=riscv64 --variant=minbase --foreign --include=python3,python3-cffi,python3-ply \
    trixie "$TMP" "$MIRROR" > "$RV_CACHE/userland-debootstrap.log" 2>&1 ||
    { tail -20 "$RV_CACHE/userland-debootstrap.log" >&2; die "debootstrap failed"; }

debs=("$TMP"/var/cache/apt/archives/*.deb)
log "unpacking ${#debs[@]} packages with dpkg -x"
for deb in "${debs[@]}"; do
    dpkg -x "$deb" "$TMP"
done
rm -f "$TMP"/var/cache/apt/archives/*.deb    # ~40 MB nobody reads again

rm -rf "$ROOT"
mv "$TMP" "$ROOT"
works || die "python3 + cffi do not run under $QEMU -L $ROOT"
echo "$KEY" > "$STAMP"
log "ready: $("$QEMU" -L "$ROOT" "$ROOT/usr/bin/python3" --version), $(du -sh "$ROOT" | cut -f1)"
