#!/usr/bin/env bash
# Sets storybot up on a fresh Debian 12 machine (as root, or with sudo): system packages,
# then a virtual environment in .venv with the package, its native library and extras.
#
#   tools/setup.sh           what telling a story needs
#   tools/setup.sh --test    and what the tests need
#   tools/setup.sh --ci      and the sanitizer, fuzzing and riscv64 toolchains CI uses
#
# Re-running is cheap: pip skips what is installed, apt what is present.
# The packages each part needs are listed in tools/*-deps.txt ("apt NAME" / "pip SPEC").
set -euo pipefail
cd "$(dirname "$0")/.."

mode=story
for arg in "$@"; do
    case $arg in
        --test) mode=test ;;
        --ci) mode=ci ;;
        *) echo "usage: tools/setup.sh [--test|--ci]" >&2; exit 2 ;;
    esac
done

deps() { # deps KIND: the packages of that kind in every deps file
    grep -h "^$1 " tools/*-deps.txt | sed 's/#.*//' | awk '{print $2}' | sort -u
}

apt_pkgs=(build-essential python3-venv $(deps apt))
[[ $mode != story ]] && apt_pkgs+=(espeak-ng systemd)
[[ $mode == ci ]] && apt_pkgs+=(clang-16 libclang-rt-16-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) != 0 ]] && sudo=sudo
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
extras=speech,quantize,bench
[[ $mode != story ]] && extras+=,test
.venv/bin/pip install -q --upgrade pip >/dev/null
# -e: the checkout is the package, so the tests and the native sources stay together
.venv/bin/pip install -q -e ".[$extras]" $(deps pip)

[[ $mode == ci ]] && bash tools/riscv/setup.sh
echo "setup: ready (.venv/bin/storybot)"
