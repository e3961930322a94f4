# Shared set-up for scripts/demo and scripts/test, sourced, never run on its own.
# Installs gearmand from Debian packages when missing and makes the project's virtualenv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GEARMAN_DRIVER_VENV:-$ROOT/.venv}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    # Install the Debian packages given that are not installed yet (one apt-get update first).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

make_venv() {
    # $1: pip extras, e.g. "test"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt_install python3-venv python3-pip
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> making the virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    local spec="$ROOT"
    [ -n "${1:-}" ] && spec="$ROOT[$1]"
    echo "==> installing gearman-driver into $VENV"
    local pip_log="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$spec" >"$pip_log" 2>&1; then
        cat "$pip_log" >&2
        echo "pip install failed (log above)" >&2
        return 1
    fi
}
