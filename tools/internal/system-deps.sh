#!/usr/bin/env bash
# Install the Debian packages listed in tools/internal/system-packages.txt that are missing.
# As root it runs apt-get; otherwise it names what is missing and the tests that need a
# package skip with that reason. Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' tools/internal/system-packages.txt)
[ "${#wanted[@]}" -gt 0 ] || exit 0
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: not installing (needs root and apt-get): ${missing[*]}" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
