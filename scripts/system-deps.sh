#!/usr/bin/env bash
# Make sure the system packages the farm needs are here: Python >= 3.11 with venv,
# redis-server and ffmpeg; with --test also chromium (the Flower dashboard test drives it
# headless). Installs what is missing with apt-get (as root, or through
# sudo when it needs no password); otherwise says exactly what to install.
set -euo pipefail

missing=()
py=${PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: farm needs Python >= 3.11; $py is $("$py" -V 2>&1). Install python3.11 and run: make PYTHON=python3.11 ..." >&2
  exit 1
elif ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

echo "farm: installing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: missing system packages: ${missing[*]}." >&2
  echo "       Install them with: sudo apt-get install -y ${missing[*]}  (then run make again)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing system packages: ${missing[*]}, and apt-get is not available to install them." >&2
  echo "       Install them with your system's package manager, then run make again." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "error: could not install ${missing[*]} with apt-get (see the messages above)." >&2
  echo "       Install them by hand: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "farm: installed ${missing[*]}"
