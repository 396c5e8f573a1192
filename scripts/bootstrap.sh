# Sourced by scripts/demo and scripts/test: installs what the project needs, idempotently.
#   QV_APT_PACKAGES  Debian packages this command needs
#   QV_APT_REQUIRED  1: fail when they cannot be installed (not root); 0: warn and go on
#   QV_EXTRAS        pip extras to install into .venv
set -euo pipefail

QV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QV_VENV="$QV_ROOT/.venv"

qv_log() { printf '[setup] %s\n' "$*" >&2; }

qv_install_apt() {
    local missing=() pkg
    for pkg in ${QV_APT_PACKAGES:-}; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        if [ "${QV_APT_REQUIRED:-1}" = 1 ]; then
            qv_log "missing Debian packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}"
            exit 1
        fi
        qv_log "optional Debian packages missing (not root, skipped): ${missing[*]}"
        return 0
    fi
    qv_log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

qv_install_venv() {
    local python="${QV_PYTHON:-python3}"
    if [ ! -x "$QV_VENV/bin/python" ]; then
        qv_log "creating virtual environment .venv"
        "$python" -m venv "$QV_VENV"
    fi
    local extras="${QV_EXTRAS:-}"
    local stamp="$QV_VENV/.quicvoice-installed"
    local want
    # The build inputs: dependencies, and the C extensions (built by pip install; the ngtcp2
    # one only where its Debian headers are installed, so they count too).
    want="$(cat "$QV_ROOT/pyproject.toml" "$QV_ROOT/setup.py" "$QV_ROOT/lb/_native.c" \
        "$QV_ROOT/quicvoice/_ngtcp2.c" "$QV_ROOT/quicvoice/_udpbatch.c" | sha256sum | cut -d' ' -f1) [$extras]"
    [ -e /usr/include/ngtcp2/ngtcp2_crypto_gnutls.h ] && want="$want +ngtcp2"
    if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
        return 0
    fi
    qv_log "installing quicvoice${extras:+[$extras]} into .venv"
    local log="$QV_VENV/install.log"
    if ! { "$QV_VENV/bin/python" -m pip install --upgrade pip \
            && "$QV_VENV/bin/python" -m pip install -e "$QV_ROOT${extras:+[$extras]}"; } >"$log" 2>&1
    then
        tail -n 40 "$log" >&2
        qv_log "pip install failed; the whole log is in .venv/install.log"
        exit 1
    fi
    # A superset install (test extras) also satisfies the demo.
    printf '%s\n' "$want" >>"$stamp"
}

qv_bootstrap() {
    qv_install_apt
    qv_install_venv
    export PATH="$QV_VENV/bin:$PATH"
    cd "$QV_ROOT"
}
