# Shared set-up for scripts/test and scripts/studio (sourced, not run).
# ensure_apt PKG...  installs the Debian packages that are missing (sudo when not root).
# ensure_venv EXTRAS activates .venv (or $KDSTUDIO_VENV), installing torch's CPU build first.

ensure_apt() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "note: not a Debian/Ubuntu system; install these yourself if something fails: ${missing[*]}" >&2
    return 0
  fi
  echo "== installing system packages: ${missing[*]}"
  local sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

QT_APT_PKGS=(libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xkb1
  libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1 libfontconfig1 libglib2.0-0 libdbus-1-3)

ensure_venv() {
  local extras="$1" venv="${KDSTUDIO_VENV:-.venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
  python -m pip install -q --upgrade pip
  # The CPU build of torch first: a bare torch requirement would pull a multi-GB CUDA build.
  # (With a GPU, install the torch build for your CUDA first; any torch>=2.4 is accepted.)
  python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".${extras}"
}
