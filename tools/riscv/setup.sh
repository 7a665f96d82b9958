#!/usr/bin/env bash
# storybot: install the riscv64 cross-build + emulation environment (Debian 12, root).
#
#   bash tools/riscv/setup.sh            # idempotent; re-running skips finished steps
#   STORYBOT_CACHE=/somewhere bash tools/riscv/setup.sh
#
# Installs
#   Debian packages : gcc-riscv64-linux-gnu (gcc 12) + libc6-dev-riscv64-cross,
#                     clang-16, qemu-user (dynamic qemu-riscv64 7.2: -plugin works),
#                     debootstrap
#   $RV_CACHE/trixie: Debian trixie chroot with gcc-14-riscv64-linux-gnu (xtheadvector)
#   $RV_CACHE/venv  : PyPI xuantie-qemu (T-Head qemu-riscv64, -cpu c906fdv) and ziglang
#   $RV_CACHE/zig-cache : zig's musl libc for riscv64, prebuilt once (~1 min)
#   $RV_CACHE/libinsncount.so : the shared qemu insncount plugin
# where RV_CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/riscv.  Then source
# tools/riscv/env.sh and run tools/riscv/check.sh.
#
# Works unattended (CI=true, no tty).  Each step is skipped when its result is
# present and its stamp matches; delete $RV_CACHE (or one stamp .stamp-*) to redo it.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RV_CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/riscv
ROOT=$RV_CACHE/trixie
VENV=$RV_CACHE/venv
LOGS=$RV_CACHE/logs
MIRROR=${STORYBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SHARED=${STORYBOT_SHARED:-$REPO/../shared}
PLUGIN_SRC=$SHARED/tools/qemu-insncount/insncount.c
PIP_PKGS=(xuantie-qemu==20230825 ziglang==0.17.1)
APT_PKGS=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross clang-16 qemu-user debootstrap
          gcc util-linux)
# bump a key to force that step to be redone on machines that already ran it
KEY_TRIXIE="trixie minbase gcc-14-riscv64-linux-gnu libc6-dev-riscv64-cross v1"
KEY_VENV="${PIP_PKGS[*]} v1"
KEY_ZIG="zig-musl-riscv64 ${PIP_PKGS[1]} v1"

T0=$(date +%s)
log() { printf '[riscv-setup %3ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[riscv-setup] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; printf "[riscv-setup] FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, debootstrap, chroot)"
[[ -r /etc/debian_version ]] || die "Debian 12 expected"
[[ $(uname -m) == x86_64 ]] || die "x86-64 host expected"
mkdir -p "$RV_CACHE" "$LOGS"
log "cache: $RV_CACHE"

stamp_ok() { [[ -f "$RV_CACHE/.stamp-$1" && "$(cat "$RV_CACHE/.stamp-$1")" == "$2" ]]; }
stamp_set() { printf '%s\n' "$2" > "$RV_CACHE/.stamp-$1"; }

# unmount anything left mounted below $1 (a killed debootstrap leaves proc/sys), so
# that rm -rf can never walk into a bind mount
umount_below() {
    local d; d=$(readlink -f "$1")
    { awk '{print $5}' /proc/self/mountinfo | grep -E "^$d(/|$)" || true; } | sort -r | while read -r m; do
        log "unmounting leftover $m"; umount -l "$m"
    done
    if awk '{print $5}' /proc/self/mountinfo | grep -qE "^$d(/|$)"; then die "mounts left below $d"; fi
}

# ------------------------------------------------------------------ python for the venv
PY=""
for p in "${STORYBOT_PYTHON:-}" python3 /usr/bin/python3; do
    [[ -n "$p" ]] || continue
    if command -v "$p" >/dev/null && "$p" -c 'import venv, ensurepip' 2>/dev/null; then PY=$(command -v "$p"); break; fi
done
[[ -n "$PY" ]] || APT_PKGS+=(python3-venv)

# ------------------------------------------------------------------ step: venv (background)
venv_ok() {
    stamp_ok venv "$KEY_VENV" && [[ -x "$VENV/bin/python" ]] &&
        compgen -G "$VENV/lib/python3*/site-packages/qemu/qemu-riscv64" >/dev/null &&
        "$VENV/bin/python" -c 'import ziglang' 2>/dev/null
}
zig_ok() { stamp_ok zig "$KEY_ZIG"; }
venv_job() {   # venv + pip + zig musl warm-up; runs in the background, logs to a file
    set -Eeuo pipefail
    if ! venv_ok; then
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check \
            --progress-bar off -q "${PIP_PKGS[@]}"
        local q; q=$(compgen -G "$VENV/lib/python3*/site-packages/qemu/qemu-riscv64" | head -1)
        [[ -x "$q" ]] || { echo "no qemu-riscv64 in xuantie-qemu"; exit 1; }
        stamp_set venv "$KEY_VENV"
        echo "venv ready"
    fi
    if ! zig_ok; then   # first zig use for a target builds musl (~1 min on 2 cores)
        local t; t=$(mktemp -d)
        printf '#include <stdio.h>\n#include <math.h>\nint main(void){printf("%%g\\n", sqrt(2.0));return 0;}\n' > "$t/hello.c"
        ZIG_GLOBAL_CACHE_DIR="$RV_CACHE/zig-cache" "$VENV/bin/python" -m ziglang cc \
            -target riscv64-linux-musl -O2 "$t/hello.c" -o "$t/hello" -lm
        rm -rf "$t"
        stamp_set zig "$KEY_ZIG"
        echo "zig musl cache ready"
    fi
}
VENV_PID=""
# on any exit, stop the background job if it is still running (only that pid)
# (the job runs in its own process group, so zig's compiler children go too)
trap '[[ -n "$VENV_PID" ]] && kill -- "-$VENV_PID" 2>/dev/null; true' EXIT
start_venv_job() {
    if venv_ok && zig_ok; then log "venv ($VENV: ${PIP_PKGS[*]}) and zig cache: already done"; return; fi
    log "venv + pip install ${PIP_PKGS[*]} + zig musl warm-up: started in background (log $LOGS/venv.log)"
    set -m                                   # own process group for the job
    venv_job > "$LOGS/venv.log" 2>&1 &
    VENV_PID=$!
    set +m
}
[[ -n "$PY" ]] && start_venv_job

# ------------------------------------------------------------------ step: Debian packages
. "$HERE/apt.sh"
apt_ensure "${APT_PKGS[@]}"
if [[ -z "$PY" ]]; then PY=/usr/bin/python3; start_venv_job; fi
for t in riscv64-linux-gnu-gcc-12 clang-16 qemu-riscv64 debootstrap unshare flock; do
    command -v "$t" >/dev/null || die "$t is missing after apt-get install"
done

# ------------------------------------------------------------------ step: trixie chroot
if stamp_ok trixie "$KEY_TRIXIE" && [[ -x "$ROOT/usr/bin/riscv64-linux-gnu-gcc-14" ]]; then
    log "trixie chroot ($ROOT): already done"
else
    log "debootstrap trixie (minbase + gcc-14-riscv64-linux-gnu) into $ROOT (log $LOGS/debootstrap.log)"
    [[ -e /usr/share/debootstrap/scripts/trixie ]] || die "this debootstrap does not know trixie"
    umount_below "$ROOT.tmp"; rm -rf "$ROOT.tmp"
    debootstrap --variant=minbase --include=gcc-14-riscv64-linux-gnu,libc6-dev-riscv64-cross \
        trixie "$ROOT.tmp" "$MIRROR" > "$LOGS/debootstrap.log" 2>&1 ||
        { tail -30 "$LOGS/debootstrap.log" >&2; umount_below "$ROOT.tmp"; die "debootstrap failed"; }
    umount_below "$ROOT.tmp"
    rm -f "$ROOT.tmp"/var/cache/apt/archives/*.deb          # ~100 MB of .debs
    mkdir -p "$ROOT.tmp/work" "$ROOT.tmp/tmp"; chmod 1777 "$ROOT.tmp/tmp"
    chroot "$ROOT.tmp" riscv64-linux-gnu-gcc-14 --version | head -1 | sed 's/^/  /'
    umount_below "$ROOT"; rm -rf "$ROOT"; mv "$ROOT.tmp" "$ROOT"
    stamp_set trixie "$KEY_TRIXIE"
    log "trixie chroot done"
fi

# ------------------------------------------------------------------ step: insncount plugin
[[ -r "$PLUGIN_SRC" ]] || die "plugin source not found: $PLUGIN_SRC (set STORYBOT_SHARED)"
if [[ -f "$RV_CACHE/libinsncount.so" && -f "$RV_CACHE/insncount.c" ]] && cmp -s "$PLUGIN_SRC" "$RV_CACHE/insncount.c"; then
    log "insncount plugin: up to date"
else
    log "building $RV_CACHE/libinsncount.so"
    gcc -O2 -shared -fPIC -o "$RV_CACHE/libinsncount.so.new" "$PLUGIN_SRC"
    mv -f "$RV_CACHE/libinsncount.so.new" "$RV_CACHE/libinsncount.so"
    cp "$PLUGIN_SRC" "$RV_CACHE/insncount.c"
fi

# ------------------------------------------------------------------ wait for the venv job
if [[ -n "$VENV_PID" ]]; then
    log "waiting for the venv/zig job"
    if ! wait "$VENV_PID"; then VENV_PID=""; tail -30 "$LOGS/venv.log" >&2; die "venv/pip/zig step failed"; fi
    VENV_PID=""
    sed 's/^/  /' "$LOGS/venv.log"
    log "venv/zig done"
fi

# ------------------------------------------------------------------ final sanity
QC=$(compgen -G "$VENV/lib/python3*/site-packages/qemu/qemu-riscv64" | head -1)
if ldd "$QC" | grep -q 'not found'; then ldd "$QC" >&2; die "xuantie qemu-riscv64 misses host libraries"; fi
chmod +x "$HERE/gcc14-xthead" 2>/dev/null || true
log "versions:"
{
    riscv64-linux-gnu-gcc-12 --version | head -1
    clang-16 --version | head -1
    qemu-riscv64 --version | head -1
    echo "xuantie $("$QC" --version | head -1)"
    chroot "$ROOT" riscv64-linux-gnu-gcc-14 --version | head -1
    echo "zig $("$VENV/bin/python" -m ziglang version)"
} | sed 's/^/  /'
log "riscv setup complete in $(( $(date +%s) - T0 ))s; now: source tools/riscv/env.sh"
