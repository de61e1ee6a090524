#!/usr/bin/env bash
# System packages the test suite needs: Debian's Chromium (browser tests drive it with Playwright; no
# browser download), redis-server (the Redis backend is tested against a real one) and a C++ compiler
# (torch.compile's Inductor builds its CPU kernels with one; tests/engine/test_compile.py). Installed
# with apt-get when missing and we are root; otherwise say what to do.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || missing+=(g++)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
