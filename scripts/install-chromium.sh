#!/usr/bin/env bash
# Installs Debian's chromium (used headless by the tree.html test) when it is not on PATH.
set -euo pipefail
source "$(dirname "$0")/lib/retry.sh"
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and there is no apt-get here: install chromium by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "chromium is missing; installing it needs root (or sudo)" >&2
    exit 1
  fi
fi
echo "installing chromium (for the tree.html test)"
retry "${sudo[@]}" apt-get update -q
retry "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
