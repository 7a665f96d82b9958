#!/usr/bin/env bash
# storybot riscv self-test: build tools/riscv/selftest/matvec.c with every toolchain
# from env.sh, run it under its qemu with the insncount plugin, print the program's
# results and the instruction counts / estimated C906 cycles between the markers
# (1->2: fp32 matvec 64x96 + scale, 3->4: two int8 dots).  Exit status != 0 on any
# failure.  Needs tools/riscv/setup.sh to have run.
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$HERE/env.sh"
SRC=$HERE/selftest/matvec.c
WORK=$(mktemp -d /tmp/storybot-rvcheck.XXXXXX)   # under /tmp: visible in the chroot
trap 'rm -rf "$WORK"' EXIT

fail=0
results=()

# run NAME "COMPILER + FLAGS" "RUNNER" "PLUGIN_SPEC" [expect-workaround]
run() {
    local name=$1 cc=$2 runner=$3 plugin=$4 exe=$WORK/$1 out=$WORK/$1.counts t0 t1
    echo "== $name"
    echo "   build: $cc -O2 $SRC -o $WORK/$name -lm"
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    if ! $cc -O2 "$SRC" -o "$exe" -lm; then
        echo "   BUILD FAILED"; fail=1; results+=("$name BUILD-FAILED"); return
    fi
    t1=$(date +%s%N)
    local kind=static
    riscv64-linux-gnu-readelf -l "$exe" | grep -q 'program interpreter' && kind=dynamic
    echo "   built in $(( (t1 - t0) / 1000000 )) ms: $kind, $(stat -c %s "$exe") bytes"
    echo "   run:   $runner -plugin $plugin ./$name"
    local rc=0
    # shellcheck disable=SC2086
    env -i PATH=/usr/bin:/bin INSNCOUNT_OUT="$out" $runner -plugin "$plugin" "$exe" > "$WORK/$name.stdout" 2>&1 || rc=$?
    sed 's/^/   | /' "$WORK/$name.stdout"
    if [[ $rc != 0 ]] || ! grep -q 'i8 dot.*OK' "$WORK/$name.stdout" || ! grep -q 'matvec.*OK' "$WORK/$name.stdout"; then
        echo "   RUN FAILED (exit $rc)"; fail=1; results+=("$name RUN-FAILED"); return
    fi
    if [[ ! -s "$out" ]]; then echo "   NO PLUGIN OUTPUT"; fail=1; results+=("$name NO-COUNTS"); return; fi
    local line
    line=$(awk '
        $1 == "mark" { n[$2] = $3; c[$2] = $4 }
        $1 == "insns" { tot = $2; vec = $4 }
        $1 == "c906_cycles" { cyc = $2 }
        END {
            if (!(1 in n) || !(2 in n) || !(3 in n) || !(4 in n)) { print "MISSING-MARKS"; exit }
            printf "f32 insns %d cycles %d | i8 insns %d cycles %d | total insns %d vector %d cycles %d",
                n[2]-n[1], c[2]-c[1], n[4]-n[3], c[4]-c[3], tot, vec, cyc
        }' "$out")
    echo "   counts: $line"
    if [[ $line == MISSING-MARKS ]]; then fail=1; results+=("$name MISSING-MARKS"); return; fi
    results+=("$(printf '%-16s %s' "$name" "$line")")
}

for v in RV_CC_GCC RV_CC_CLANG RV_CC_XTHEAD RV_CC_ZIG QEMU_RV QEMU_RVV QEMU_C906 INSNCOUNT_SO; do
    printf '%-13s= %s\n' "$v" "${!v}"
done
[[ -f "$INSNCOUNT_SO" ]] || { echo "missing $INSNCOUNT_SO: run tools/riscv/setup.sh"; exit 1; }

run gcc12-rv64gc     "$RV_CC_GCC"              "$QEMU_RV"   "$INSNCOUNT_SO"
run clang16-rvv1.0   "$RV_CC_CLANG -DUSE_RVV"  "$QEMU_RVV"  "$INSNCOUNT_SO"
run gcc14-xthead     "$RV_CC_XTHEAD -DUSE_RVV" "$QEMU_C906" "$INSNCOUNT_C906_PLUGIN"
run gcc14-xthead-st  "$RV_CC_XTHEAD -DUSE_RVV -static" "$QEMU_C906" "$INSNCOUNT_C906_PLUGIN"
run zig-musl         "$RV_CC_ZIG"              "$QEMU_RV"   "$INSNCOUNT_SO"

# the GCC 14 `th.vsetvli zero,0,...` workaround: the raw -S output of this source has
# it, and the build above only assembled because the wrapper's as shim rewrote it
echo "== gcc14 th.vsetvli workaround"
if "$RV_CC_XTHEAD" -O2 -DUSE_RVV -S "$SRC" -o "$WORK/x.s"; then
    n=$(grep -cE 'th\.vsetvli[[:space:]]+zero,0,' "$WORK/x.s" || true)
    echo "   raw gcc 14 -S output has $n 'th.vsetvli zero,0,' (rewritten to zero,zero by the as shim)"
else
    echo "   gcc 14 -S FAILED"; fail=1
fi
echo "   xthead file access mode: ${STORYBOT_XTHEAD_MODE:-$(cat "$RV_TRIXIE_ROOT/.xthead-mode" 2>/dev/null || echo '?')}"

echo
echo "summary (insns/cycles between markers; cycles = insncount's C906 estimate):"
printf '  %s\n' "${results[@]}"
if [[ $fail != 0 ]]; then echo "riscv check: FAILED"; exit 1; fi
echo "riscv check: all ${#results[@]} toolchains OK"
