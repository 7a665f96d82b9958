#!/bin/sh
# Installs the storybot board bundle this script came in (made by `storybot bundle`).
# POSIX sh: runs under BusyBox ash (the Milk-V Duo's stock image), dash and bash.
#
#   sh install.sh [options]
#     --prefix DIR     where releases go (default /opt/storybot)
#     --root DIR       the system to install into, for a cross install from another
#                      machine: files go to DIR/PREFIX, DIR/etc, ... (default /)
#     --libc NAME      musl or glibc (default: the dynamic loader found under ROOT)
#     --cpu NAME       c906 (XTheadVector) or rv64gc (default: c906 if the device tree
#                      says thead,c906, else rv64gc)
#     --init NAME      busybox (/etc/init.d/S99storybot), systemd, or none (default: the
#                      one running, else the one present under ROOT)
#     --no-service     the same as --init none: nothing is written outside PREFIX
#     --emulator CMD   run the bundle's riscv64 programs through CMD for the checks,
#                      e.g. "qemu-riscv64-static -L ROOT" (default: run them directly
#                      when this is a riscv64 machine installing into /, else skip)
#
# In an order that never breaks what works:
#  1. every file of the bundle must match MANIFEST (sha256), none missing or extra;
#  2. the bundle is copied to PREFIX/releases/.new-ID (ID: the version and a hash of
#     MANIFEST), the copy is checked again, the library and CLI for this libc and CPU
#     are linked in, the Python package is compiled to bytecode, and the CLI and
#     the library (through python3, if there is one) each tell a 4-token story;
#  3. the copy is renamed to releases/ID and PREFIX/current is pointed at it with one
#     rename (ln -sfn then mv -T), so current is never missing or half-made;
#  4. the service (unless --no-service) and, if absent, /etc/storybot/storybot.env;
#  5. after a switch, releases other than the new and the previous one are removed, and
#     any copy an interrupted install left (releases/.new-*, e.g. after a power cut).
# A failure in 1-3 leaves PREFIX/current as it was. Running it again with the same
# bundle finds the release in place, checks it, and changes nothing.
set -eu
umask 022

PREFIX=/opt/storybot
ROOT=/
LIBC=auto
CPU=auto
INIT=auto
EMULATOR=
EMULATOR_SET=no

say() { printf 'storybot install: %s\n' "$*"; }
die() { printf 'storybot install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
	case $1 in
		--prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
		--root) ROOT=${2:?--root needs a directory}; shift ;;
		--libc) LIBC=${2:?--libc needs musl or glibc}; shift ;;
		--cpu) CPU=${2:?--cpu needs c906 or rv64gc}; shift ;;
		--init) INIT=${2:?--init needs busybox, systemd or none}; shift ;;
		--no-service) INIT=none ;;
		--emulator) EMULATOR=${2:?--emulator needs a command}; EMULATOR_SET=yes; shift ;;
		-h|--help) sed -n '2,29p' "$0"; exit 0 ;;
		*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
case $PREFIX in /*) ;; *) die "--prefix must be an absolute path" ;; esac
ROOT=${ROOT%/}                       # "" for /, so "$ROOT/etc" is /etc
BUNDLE=$(cd "$(dirname "$0")" && pwd)
DEST=$ROOT$PREFIX                    # where the files go; PREFIX is how the system sees it

# --- 1. the bundle must be exactly what its MANIFEST lists ---------------------------

# verify DIR: prints what is wrong and fails, or prints nothing
verify() {
	(
		cd "$1" || exit 1
		[ -f MANIFEST ] || { echo "no MANIFEST in $1"; exit 1; }
		# "<64 hex>  <path>" lines only, and no path may leave the bundle
		if grep -vqE '^[0-9a-f]{64}  [A-Za-z0-9._/+-]+$' MANIFEST ||
			awk '{ print $2 }' MANIFEST | grep -qE '^/|(^|/)\.\.(/|$)'; then
			echo "MANIFEST is malformed"
			exit 1
		fi
		bad=$(sha256sum -c MANIFEST 2>&1 | grep -v ': OK$' || true)
		[ -z "$bad" ] || { printf '%s\n' "$bad"; exit 1; }
		listed=$(awk '{ print $2 }' MANIFEST | sort)
		# bytecode is made here (step 2), not shipped
		present=$(find . -type f ! -name MANIFEST ! -path '*/__pycache__/*' | sed 's|^\./||' | sort)
		if [ "$listed" != "$present" ]; then
			echo "files not listed in MANIFEST:"
			printf '%s\n' "$present" | grep -vxF "$listed" || true
			exit 1
		fi
	)
}

if ! problems=$(verify "$BUNDLE"); then
	printf '%s\n' "$problems" >&2
	die "refusing the bundle in $BUNDLE: it does not match its MANIFEST (damaged or altered)"
fi
VERSION=$(cat "$BUNDLE/VERSION")
ID=$VERSION-$(sha256sum "$BUNDLE/MANIFEST" | cut -c1-12)
MODEL=$(sed -n 's/^STORYBOT_MODEL=//p' "$BUNDLE/storybot.env" | tail -n 1)
say "bundle $ID checked ($(wc -l < "$BUNDLE/MANIFEST") files)"

# --- 2. a complete, checked copy next to the current release ---------------------------

detect_libc() {
	for f in "$ROOT"/lib/ld-musl-riscv64*.so.1; do
		[ -e "$f" ] && { echo musl; return; }
	done
	for f in "$ROOT"/lib/ld-linux-riscv64-lp64d.so.1 "$ROOT"/lib64/ld-linux-riscv64-lp64d.so.1; do
		[ -e "$f" ] && { echo glibc; return; }
	done
	echo unknown
}

detect_cpu() {
	# compatible strings are NUL-separated: "thead,c906\0riscv\0"
	if cat "$ROOT"/proc/device-tree/cpus/cpu*/compatible 2>/dev/null | tr '\000' '\n' |
		grep -qx 'thead,c906'; then
		echo c906
	else
		echo rv64gc
	fi
}

[ "$LIBC" = auto ] && LIBC=$(detect_libc)
[ "$CPU" = auto ] && CPU=$(detect_cpu)
case $LIBC in musl|glibc) ;; *) die "cannot tell the C library under ${ROOT:-/}; give --libc musl or --libc glibc" ;; esac
case $CPU in c906|rv64gc) ;; *) die "--cpu must be c906 or rv64gc" ;; esac
LIBDIR=$LIBC-$CPU
[ -f "$BUNDLE/lib/$LIBDIR/libstorybot.so" ] || LIBDIR=$LIBC-rv64gc

if [ "$EMULATOR_SET" = no ] && { [ -n "$ROOT" ] || [ "$(uname -m)" != riscv64 ]; }; then
	CAN_RUN=no
else
	CAN_RUN=yes
fi

# release_python DIR ARGS...: python3 run in release DIR, so that no robot/ of the
# current directory is imported instead (a subshell: dir stays its own)
release_python() (
	dir=$1
	shift
	# shellcheck disable=SC2086  # EMULATOR is a word list
	cd "$dir" && PYTHONPATH="$dir/python" STORYBOT_ABI=1 $EMULATOR "$ROOT/usr/bin/python3" "$@"
)

# check_release DIR: the CLI and, where there is a Python, the library in ABI mode
# each tell a short story
check_release() {
	if [ "$CAN_RUN" = no ]; then
		say "not running the checks: this machine cannot run riscv64 programs (give --emulator)"
		return 0
	fi
	story="$1/models/$MODEL -z $1/models/tokenizer.bin -n 4 -t 0 -i Once"
	# shellcheck disable=SC2086  # EMULATOR and story are word lists
	out=$($EMULATOR "$1/bin/storybot-run" $story 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
	[ -n "$out" ] || return 1
	say "storybot-run ($CPU) told: $(printf '%s\n' "$out" | head -n 1)"
	if [ ! -e "$ROOT/usr/bin/python3" ]; then
		say "no python3 under ${ROOT:-/}: only the CLI can run here (storybot serve needs python3 and cffi)"
		return 0
	fi
	# Bytecode now, for this python3: the daemon then starts faster and without the
	# compiler's memory, also where it may not write (systemd's ProtectSystem=strict).
	# shellcheck disable=SC2086
	$EMULATOR "$ROOT/usr/bin/python3" -m compileall -q "$1/python" > /dev/null || return 1
	# shellcheck disable=SC2086  # story is a word list
	out=$(release_python "$1" -m robot.cli generate $story 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
	say "storybot generate (lib/$LIBDIR, ABI mode) told: $(printf '%s\n' "$out" | head -n 1)"
	# The standard library's bytecode for what the daemon imports, where this python3 came
	# without it: else the daemon compiles those modules when it starts (at every start
	# where it may not write) and keeps ~2 MiB more for good (tools/board-vm/README.md).
	out=$(release_python "$1" -c 'import robot.board, robot.cli, robot.service' 2>&1) ||
		{ printf '%s\n' "$out" >&2; return 1; }
}

mkdir -p "$DEST/releases"
NEW=$DEST/releases/$ID
if [ -d "$NEW" ] && verify "$NEW" > /dev/null; then
	say "release $ID is already installed and intact"
else
	TMP=$DEST/releases/.new-$ID
	trap 'rm -rf "$TMP"' EXIT
	trap 'exit 1' INT TERM HUP
	rm -rf "$TMP"
	mkdir -p "$TMP"
	while read -r _ path; do
		mkdir -p "$TMP/$(dirname "$path")"
		cp -p "$BUNDLE/$path" "$TMP/$path"
	done < "$BUNDLE/MANIFEST"
	cp -p "$BUNDLE/MANIFEST" "$TMP/MANIFEST"
	problems=$(verify "$TMP") || die "the copy in $TMP is damaged (disk full or failing?): $problems"
	ln -s "../../lib/$LIBDIR/libstorybot.so" "$TMP/python/robot/libstorybot.so"
	ln -s "storybot-run.$CPU" "$TMP/bin/storybot-run"
	ln -s "storybot-bench.$CPU" "$TMP/bin/storybot-bench"
	check_release "$TMP" || die "the new release does not run here (libc $LIBC, cpu $CPU); nothing was changed"
	rm -rf "$NEW"                   # a damaged copy of this very release, if any
	mv "$TMP" "$NEW"
	trap - EXIT
	say "installed release $ID (libc $LIBC, cpu $CPU, library lib/$LIBDIR)"
fi

# --- 3. switch current with one rename ------------------------------------------------

# The release's files on the disk before current names it: ext4 commits a rename within
# seconds but writes new files' data later, so a power cut after the switch could leave
# current pointing at empty files (tests/test_board_vm.py cuts the power there).
sync
PREVIOUS=$(readlink "$DEST/current" 2>/dev/null || true)
SWITCHED=no
if [ "$PREVIOUS" = "releases/$ID" ]; then
	say "current already is $ID"
else
	SWITCHED=yes
	ln -sfn "releases/$ID" "$DEST/current.new"
	# mv -T renames the link itself (rename(2) is atomic); without -T, mv would move it
	# into the directory current points to. An mv without -T (old BusyBox builds) falls
	# back to ln -sfn, which leaves current missing for an instant.
	if ! mv -T "$DEST/current.new" "$DEST/current" 2>/dev/null; then
		rm -f "$DEST/current.new"
		ln -sfn "releases/$ID" "$DEST/current"
	fi
	say "current -> releases/$ID${PREVIOUS:+ (was $PREVIOUS)}"
fi

# --- 4. service and settings ----------------------------------------------------------

if [ "$INIT" = auto ]; then
	if [ -d "$ROOT/run/systemd/system" ]; then INIT=systemd
	elif [ -d "$ROOT/etc/init.d" ]; then INIT=busybox
	elif [ -d "$ROOT/etc/systemd/system" ]; then INIT=systemd
	else INIT=none
	fi
fi
case $INIT in
	busybox)
		mkdir -p "$ROOT/etc/init.d"
		cp "$DEST/current/service/S99storybot" "$ROOT/etc/init.d/S99storybot.new"
		chmod 755 "$ROOT/etc/init.d/S99storybot.new"
		mv -f "$ROOT/etc/init.d/S99storybot.new" "$ROOT/etc/init.d/S99storybot"
		# the init script runs /usr/bin/storybot unless told otherwise
		mkdir -p "$ROOT/usr/bin"
		ln -sfn "$PREFIX/current/bin/storybot" "$ROOT/usr/bin/storybot"
		say "installed /etc/init.d/S99storybot (starts at boot) and /usr/bin/storybot"
		;;
	systemd)
		unit=$ROOT/etc/systemd/system/storybot-board.service
		mkdir -p "$unit.d"
		cp "$DEST/current/service/storybot-board.service" "$unit"
		# the unit is written for a pip install; this drop-in points it at the bundle
		printf '%s\n' "# written by the storybot bundle's install.sh" "[Service]" \
			"ExecStart=" "ExecStart=$PREFIX/current/bin/storybot serve" \
			"ReadOnlyPaths=" "ReadOnlyPaths=$PREFIX" > "$unit.d/bundle.conf"
		say "installed storybot-board.service with a drop-in for $PREFIX"
		;;
	none) say "no service installed" ;;
	*) die "--init must be busybox, systemd or none" ;;
esac
if [ "$INIT" != none ]; then
	mkdir -p "$ROOT/etc/storybot"
	settings=$ROOT/etc/storybot/storybot.env
	cp "$DEST/current/storybot.env" "$settings.bundle"
	if [ -f "$settings" ] && ! cmp -s "$settings" "$settings.bundle"; then
		say "kept your /etc/storybot/storybot.env; this bundle's defaults are in storybot.env.bundle"
	else
		mv -f "$settings.bundle" "$settings"
	fi
	if [ -z "$ROOT" ]; then          # the live system: pick the new release up now
		if [ "$INIT" = systemd ]; then
			systemctl daemon-reload && systemctl enable storybot-board &&
				systemctl try-restart storybot-board
		elif /etc/init.d/S99storybot status > /dev/null 2>&1; then
			/etc/init.d/S99storybot restart
		fi
	fi
fi

# --- 5. keep the new and the previous release -----------------------------------------

if [ "$SWITCHED" = yes ]; then
	# .new-*: a power cut during step 2 leaves its copy, which the trap did not remove
	for dir in "$DEST"/releases/* "$DEST"/releases/.new-*; do
		[ -d "$dir" ] || continue
		case releases/${dir##*/} in
			"releases/$ID"|"$PREVIOUS") ;;
			releases/.new-*) rm -rf "$dir"; say "removed ${dir##*/}, left by an interrupted install" ;;
			*) rm -rf "$dir"; say "removed old release ${dir##*/}" ;;
		esac
	done
fi
sync # "done" means it is on the disk: the board may be unplugged now
say "done: $PREFIX/current/bin/storybot serve (or storybot-run for the CLI alone)"
