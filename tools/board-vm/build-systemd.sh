#!/usr/bin/env bash
# storybot: the emulated Duo's second root disk, with systemd as PID 1, to run
# systemd/storybot-board.service for real (README.md here, "The systemd variant").
#
#   bash tools/board-vm/build-systemd.sh            # idempotent: 0 s once its stamp matches
#   DIR=$(bash tools/board-vm/build-systemd.sh --print-dir)   # rootfs-systemd.ext4
#
# The kernel and initramfs are build.sh's (its initramfs switch_roots to /sbin/init,
# here systemd-sysv's link to /lib/systemd/systemd). The disk is tools/riscv/userland.sh's
# userland plus Debian trixie's systemd, systemd-sysv, udev and the libraries they need
# that the userland lacks, unpacked with dpkg -x as the userland was (no maintainer
# scripts: what they would do that systemd needs is done below), BusyBox for install.sh
# (run with busybox sh, as on the board) and rootfs-systemd/ (network, root console).
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STORYBOT_CACHE:-${HOME:-/root}/.cache/storybot}/board-vm
OUT=$CACHE/images-systemd
DISK_MB=768
# systemd's and udev's dependencies minus the userland's packages
# (apt-cache depends --recurse, without the alternatives debconf/sysusers pull in), and
# libnss-systemd: a DynamicUser= service's user has a name and a home only through it
PKGS="systemd systemd-sysv udev libsystemd-shared libapparmor1 libkmod2 libseccomp2
      libnss-systemd"

if [[ ${1:-} == --print-dir ]]; then echo "$OUT"; exit 0; fi
T0=$(date +%s)
log() { printf '[board-vm-systemd %3ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[board-vm-systemd] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (files owned by root in the disk)"

bash "$HERE/build.sh" > /dev/null     # the kernel, initramfs, BusyBox and the apt lists
IMAGES=$(bash "$HERE/build.sh" --print-dir)
USERLAND=$(bash "$HERE/../riscv/userland.sh" --print-root)
KEY=$(cat "$0" $(find "$HERE/rootfs-systemd" -type f | sort) "$IMAGES/.stamp" |
    sha256sum | cut -c1-16)
if [[ -f $OUT/.stamp && $(cat "$OUT/.stamp") == "$KEY" ]]; then
    log "disk ($OUT): already done"
    exit 0
fi

APT_DIR=$CACHE/apt
APT=(-o "Dir=$APT_DIR" -o "Dir::State::status=$APT_DIR/var/lib/dpkg/status"
     -o APT::Architecture=riscv64 -o APT::Architectures::=riscv64 -o Debug::NoLocking=1
     -o APT::Sandbox::User=root)
TMP=$CACHE/work-systemd
rm -rf "$TMP" && mkdir -p "$TMP"/{debs,busybox,out}
log "apt-get download $PKGS busybox-static"
(cd "$TMP/debs" && apt-get "${APT[@]}" download -qq $PKGS busybox-static)

RF=$TMP/rootfs
mkdir -p "$RF"
tar -C "$USERLAND" --exclude=./opt --exclude=./debootstrap -cf - . | tar -C "$RF" -xf -
for deb in "$TMP"/debs/*.deb; do
    case $deb in
        */busybox-static_*) dpkg -x "$deb" "$TMP/busybox" ;;
        *) dpkg -x "$deb" "$RF" ;;
    esac
done
mkdir -p "$RF"/{opt,proc,sys,dev,run,tmp,mnt,var/log/journal}
rm -rf "$RF/var/run" && ln -s /run "$RF/var/run"
[[ -L $RF/sbin/init || -e $RF/sbin/init ]] || die "systemd-sysv gave no /sbin/init"
# BusyBox for install.sh (busybox sh, as on the board) and where the userland has no
# program of that name; systemd's own poweroff, reboot, halt stay
BUSYBOX=$TMP/busybox/usr/bin/busybox
cp "$BUSYBOX" "$RF/bin/busybox"
for applet in $(qemu-riscv64-static "$BUSYBOX" --list); do
    [[ -e $RF/bin/$applet || -e $RF/sbin/$applet || -e $RF/usr/bin/$applet ||
       -e $RF/usr/sbin/$applet || -L $RF/bin/$applet || -L $RF/sbin/$applet ]] ||
        ln -s /bin/busybox "$RF/bin/$applet"
done
# what the maintainer scripts would have made: base-passwd's users and groups, the
# machine id (one for the image: each VM is a copy of it), an empty fstab (the
# initramfs mounts / read-write)
cp "$USERLAND/usr/share/base-passwd/passwd.master" "$RF/etc/passwd"
cp "$USERLAND/usr/share/base-passwd/group.master" "$RF/etc/group"
# systemd/README.md's `groupadd -f gpio`: the unit's SupplementaryGroups=gpio
echo "gpio:x:990:" >> "$RF/etc/group"
tr -d '-' < /proc/sys/kernel/random/uuid > "$RF/etc/machine-id"
: > "$RF/etc/fstab"
# libnss-systemd's postinst adds it to passwd and group (libc-bin's has no file here)
printf '%s\n' "passwd: files systemd" "group: files systemd" "shadow: files" \
    "hosts: files dns" > "$RF/etc/nsswitch.conf"
echo storybot-duo > "$RF/etc/hostname"
cp -a "$HERE/rootfs-systemd/." "$RF/"
# the enablements `systemctl enable` would make (WantedBy= of these units)
W=$RF/etc/systemd/system
mkdir -p "$W/multi-user.target.wants" "$W/network-online.target.wants"
ln -sfn /etc/systemd/system/storybot-vm-console.service "$W/multi-user.target.wants/"
ln -sfn /etc/systemd/system/storybot-vm-net.service "$W/network-online.target.wants/"
ln -sfn /etc/systemd/system/storybot-vm-net.service "$W/multi-user.target.wants/"
# eth0 as in the BusyBox variant: udev's predictable names (enp0s2) off
mkdir -p "$RF/etc/systemd/network"
ln -sfn /dev/null "$RF/etc/systemd/network/99-default.link"
# the console is storybot-vm-console's root shell, not a login prompt
ln -sfn /dev/null "$W/serial-getty@ttyS0.service"
ln -sfn /lib/systemd/system/multi-user.target "$W/default.target"
chown -R 0:0 "$RF"
mkfs.ext4 -q -L storybot-root -d "$RF" "$TMP/out/rootfs-systemd.ext4" "${DISK_MB}M" > /dev/null
rm -rf "$OUT"
mv "$TMP/out" "$OUT"
rm -rf "$TMP"
echo "$KEY" > "$OUT/.stamp"
log "ready in $OUT: root disk $(du -m "$OUT/rootfs-systemd.ext4" | cut -f1) MB used of $DISK_MB"
