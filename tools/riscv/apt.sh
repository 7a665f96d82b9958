# storybot: apt_ensure PKG..., installs the Debian packages that are not installed yet
# (root). Sourced by tools/riscv/setup.sh and userland.sh; uses their log and die.
# shellcheck shell=bash
apt_ensure() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    local out; out=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } > "$out" 2>&1 ||
        { tail -30 "$out" >&2; rm -f "$out"; die "apt-get install ${missing[*]} failed"; }
    rm -f "$out"
    log "apt done"
}
