#!/bin/sh
# One entry point for people and CI. Works on a fresh Debian / Raspberry Pi OS (bookworm) machine.
#   ./dev.sh demo   set up, start a local Mosquitto and run the agent on simulated sensors (Ctrl-C stops)
#   ./dev.sh test   set up and run the test suite
#   ./dev.sh setup  only install (system packages when root or with sudo, then .venv with every extra)
set -eu
cd "$(dirname "$0")"
VENV=${EDGE_AGENT_VENV:-.venv}
PY=${PYTHON:-python3}

apt_install() {
  # $1: the system packages needed; those already present are skipped
  pkgs=$1
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "dev.sh: please install:$missing" >&2; return 0
  fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "dev.sh: installing$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
}

DEMO_PKGS="python3-venv mosquitto"
TEST_PKGS=$(sed 's/#.*//' .ci/apt-packages.txt | tr -s ' \n' ' ')

setup() {
  # $1: the system packages, $2: the extras to install ("" for the agent alone)
  apt_install "$1"
  if [ ! -x "$VENV/bin/python" ]; then
    $PY -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e ".$2"
}

case "${1:-demo}" in
  setup) setup "$TEST_PKGS" "[test,tflite,systemd]" ;;
  demo) setup "$DEMO_PKGS" ""; shift || true; exec "$VENV/bin/edge-agent" demo "$@" ;;
  test) setup "$TEST_PKGS" "[test,tflite,systemd]"; shift || true; PATH="$PWD/$VENV/bin:$PATH"; export PATH
        "$VENV/bin/ruff" check . && exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh [demo|test|setup] [args...]" >&2; exit 2 ;;
esac
