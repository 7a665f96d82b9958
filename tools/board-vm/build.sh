#!/usr/bin/env bash
# storybot: the emulated Milk-V Duo's kernel, initramfs and root disk, for
# qemu-system-riscv64 -M virt (robot/dev/boardvm.py boots them; README.md here says how).
#
#   bash tools/board-vm/build.sh            # idempotent: 0 s once its stamp matches
#   DIR=$(bash tools/board-vm/build.sh --print-dir)   # Image, initramfs.cpio.gz, rootfs.ext4
#
# Everything comes from Debian trixie riscv64 (the archive tools/riscv/userland.sh uses):
#  * the kernel: linux-image-*-riscv64. Its vmlinux is an uncompressed Image with an EFI
#    stub, which qemu's -kernel boots through OpenSBI (-bios default). virtio-pci and the
#    PCI host are built in; virtio_blk, virtio_net and ext4 are modules, so
#  * an initramfs of a static BusyBox (busybox-static) loads them (decompressed here, no
#    depmod), mounts /dev/vda and switch_roots to it;
#  * the root disk: tools/riscv/userland.sh's userland (python3 + cffi), with BusyBox
#    as /sbin/init and /bin/sh (as on the stock Duo image) and this folder's rootfs/
#    (inittab, rcS), made with mkfs.ext4 -d (no loop mount, no root in a VM needed).
# Cached in ${STORYBOT_CACHE:-~/.cache/storybot}/board-vm, ~350 MB (the disk is sparse).
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/board-vm
OUT=$CACHE/images
MIRROR=${STORYBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISK_MB=640        # the userland (~190 MB), two releases (~37 MB) and room to unpack a bundle
# modules in load order (each after what it depends on; modinfo's depends= lines)
MODULES="virtio_blk crc16 mbcache jbd2 crc32c_generic ext4 failover net_failover virtio_net"
APT_PKGS=(qemu-system-misc e2fsprogs cpio xz-utils)

if [[ ${1:-} == --print-dir ]]; then echo "$OUT"; exit 0; fi
T0=$(date +%s)
log() { printf '[board-vm %3ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[board-vm] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, files owned by root in the disk)"

missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
bash "$HERE/../riscv/userland.sh" > /dev/null
USERLAND=$(bash "$HERE/../riscv/userland.sh" --print-root)

# The stamp: this folder's files and the userland's own stamp; a change rebuilds.
KEY=$(cat "$0" $(find "$HERE/rootfs" "$HERE/initramfs-init" -type f | sort) \
    "$USERLAND/../.stamp-userland" | sha256sum | cut -c1-16)
if [[ -f $OUT/.stamp && $(cat "$OUT/.stamp") == "$KEY" ]]; then
    log "images ($OUT): already done"
    exit 0
fi

# --- the packages, through apt with a private riscv64 trixie configuration ----------------
APT_DIR=$CACHE/apt
mkdir -p "$APT_DIR"/etc/apt/{sources.list.d,preferences.d} "$APT_DIR"/var/lib/apt/lists/partial \
    "$APT_DIR"/var/cache/apt/archives/partial "$APT_DIR"/var/lib/dpkg "$CACHE/debs"
touch "$APT_DIR/var/lib/dpkg/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
    > "$APT_DIR/etc/apt/sources.list"
APT=(-o "Dir=$APT_DIR" -o "Dir::State::status=$APT_DIR/var/lib/dpkg/status"
     -o APT::Architecture=riscv64 -o APT::Architectures::=riscv64 -o Debug::NoLocking=1
     -o APT::Sandbox::User=root)
log "apt-get update (trixie riscv64, private lists in $APT_DIR)"
apt-get "${APT[@]}" update -qq 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
# linux-image-riscv64 is a metapackage: the versioned image it depends on
KPKG=$(apt-cache "${APT[@]}" depends linux-image-riscv64 | awk '/Depends: linux-image-/ { print $2; exit }')
[[ -n $KPKG ]] || die "cannot resolve linux-image-riscv64 in trixie"
log "apt-get download $KPKG busybox-static"
rm -f "$CACHE"/debs/*.deb
(cd "$CACHE/debs" && apt-get "${APT[@]}" download -qq "$KPKG" busybox-static)

TMP=$CACHE/work
rm -rf "$TMP" && mkdir -p "$TMP"/{kernel,busybox}
dpkg -x "$CACHE"/debs/linux-image-*.deb "$TMP/kernel"
dpkg -x "$CACHE"/debs/busybox-static_*.deb "$TMP/busybox"
BUSYBOX=$TMP/busybox/usr/bin/busybox
[[ -x $BUSYBOX ]] || die "no usr/bin/busybox in busybox-static"
mkdir -p "$TMP/out"
cp "$TMP"/kernel/boot/vmlinux-* "$TMP/out/Image"
KVER=$(basename "$TMP"/kernel/usr/lib/modules/*)

# --- the initramfs: BusyBox, the modules, /init ---------------------------------------------
IR=$TMP/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,modules}
cp "$BUSYBOX" "$IR/bin/busybox"
ln -s busybox "$IR/bin/sh"
for m in $MODULES; do
    ko=$(find "$TMP/kernel/usr/lib/modules/$KVER" -name "$m.ko.xz")
    [[ -n $ko ]] || die "module $m is not in $KPKG"
    xz -dc "$ko" > "$IR/modules/$m.ko"
done
echo "$MODULES" > "$IR/modules/order"
install -m 755 "$HERE/initramfs-init" "$IR/init"
(cd "$IR" && find . | LC_ALL=C sort | cpio -o -H newc --owner 0:0 --quiet | gzip -9) \
    > "$TMP/out/initramfs.cpio.gz"

# --- the root disk -------------------------------------------------------------------------
RF=$TMP/rootfs
log "root file system: $USERLAND + BusyBox + rootfs/"
mkdir -p "$RF"
# not /opt: tests install releases into the shared userland under /opt/storybot-test-*
tar -C "$USERLAND" --exclude=./opt --exclude=./debootstrap -cf - . | tar -C "$RF" -xf -
mkdir -p "$RF"/{opt,proc,sys,dev,run,tmp,mnt,var/log}
# as base-files' maintainer script would: /var/run is the tmpfs /run
rm -rf "$RF/var/run" && ln -s /run "$RF/var/run"
cp "$BUSYBOX" "$RF/bin/busybox"
# BusyBox is init and /bin/sh, as on the Duo; its other applets only where the
# userland has no program of that name (ip, ifconfig, reboot, ...)
ln -sfn /bin/busybox "$RF/sbin/init"
ln -sfn busybox "$RF/bin/sh"
for applet in $(qemu-riscv64-static "$BUSYBOX" --list); do
    [[ -e $RF/bin/$applet || -e $RF/sbin/$applet || -e $RF/usr/bin/$applet ||
       -e $RF/usr/sbin/$applet || -L $RF/bin/$applet ]] || ln -s /bin/busybox "$RF/bin/$applet"
done
# what base-passwd's maintainer script would have made (the userland ran none)
cp "$USERLAND/usr/share/base-passwd/passwd.master" "$RF/etc/passwd"
cp "$USERLAND/usr/share/base-passwd/group.master" "$RF/etc/group"
cp -a "$HERE/rootfs/." "$RF/"
chown -R 0:0 "$RF"
echo storybot-duo > "$RF/etc/hostname"
rm -f "$TMP/out/rootfs.ext4"
mkfs.ext4 -q -L storybot-root -d "$RF" "$TMP/out/rootfs.ext4" "${DISK_MB}M" > /dev/null

rm -rf "$OUT"
mv "$TMP/out" "$OUT"
echo "$KPKG" > "$OUT/kernel-package"
rm -rf "$TMP"
echo "$KEY" > "$OUT/.stamp"
log "ready in $OUT: $(cat "$OUT/kernel-package"), initramfs $(du -k "$OUT/initramfs.cpio.gz" | cut -f1) kB, root disk $(du -m "$OUT/rootfs.ext4" | cut -f1) MB used of $DISK_MB"
