#!/usr/bin/env bash
# One command for the Linux wheels of every gateway, built here as cibuildwheel would:
# x86_64 natively, aarch64 and armv7l under qemu-user, each in a Debian bullseye root
# (glibc 2.31, Python 3.9) and repaired to manylinux_2_31 (tools/internal/wheel_root.sh build). With
# --smoke, each wheel is then installed from a local index, binaries only, into a fresh
# venv in a clean root of each release named, and smoke-tested (tools/internal/wheel_root.sh smoke).
# A release other than bullseye has another Python, which the cp39 wheel does not fit: its
# wheel is built in its own root first (tagged with that release's glibc).
#
# Usage (as root):
#   tools/wheels.sh                                        # the three wheels into wheelhouse/
#   tools/wheels.sh --arch "arm64 armhf" --smoke bullseye  # what .ci/run does
#   tools/wheels.sh --smoke "bullseye bookworm trixie"     # every arch on every release
#   tools/wheels.sh --smoke bullseye -- -k codec           # arguments after -- go to pytest
# The architectures run side by side (emulated builds and tests mostly wait on one core
# each); a summary table (date, commit, wheel, tests, time) ends the output and is kept in
# wheelhouse/results.md for docs/platforms.md.
set -euo pipefail
cd "$(dirname "$0")/.."

archs="amd64 arm64 armhf"
smoke_releases=""
pytest_args=()
while (($#)); do
    case "$1" in
        --arch) archs="$2"; shift 2 ;;
        --smoke) smoke_releases="$2"; shift 2 ;;
        --) shift; pytest_args=("$@"); break ;;
        *) echo "usage: $0 [--arch \"amd64 arm64 armhf\"] [--smoke \"bullseye bookworm trixie\"] [-- pytest args]" >&2; exit 2 ;;
    esac
done
export WHEELHOUSE="${WHEELHOUSE:-$PWD/wheelhouse}"
mkdir -p "$WHEELHOUSE"
logs="$(mktemp -d "${TMPDIR:-/var/tmp}/pyv-wheels.XXXXXX")"
trap 'rm -rf "$logs"' EXIT
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src setup.py pyproject.toml || echo +changes)"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/pyv_edge_agent/cloud_sync/__init__.py)"
# Old wheels of this version would be found by the smoke run's index: start clean.
rm -f "$WHEELHOUSE"/pyv_edge_agent-"$version"-*.whl "$WHEELHOUSE"/results.md

# One architecture's work, in order: build on bullseye, then for each smoke release build
# there if it is not bullseye, and smoke. A row of the summary per step.
arch_job() {
    local arch="$1" release started status row
    # bullseye first, each release once (--smoke bullseye must not smoke it twice).
    for release in $(printf '%s\n' bullseye $smoke_releases | awk '!seen[$0]++'); do
        if [[ "$release" != bullseye || ! -e "$logs/$arch-bullseye-build.log" ]]; then
            started=$SECONDS
            status=passed
            bash tools/internal/wheel_root.sh build "$arch" "$release" > "$logs/$arch-$release-build.log" 2>&1 || status=FAILED
            echo "| $arch | $release | build | $(date -u +%F) | $commit | $(wheel_of "$logs/$arch-$release-build.log") | $status | $((SECONDS - started)) s |" >> "$logs/$arch.rows"
            [[ "$status" == passed ]] || return 1
        fi
        [[ " $smoke_releases " == *" $release "* ]] || continue
        started=$SECONDS
        status=0
        bash tools/internal/wheel_root.sh smoke "$arch" "$release" -- "${pytest_args[@]}" \
            > "$logs/$arch-$release-smoke.log" 2>&1 || status=$?
        row="$(tail -n 40 "$logs/$arch-$release-smoke.log" | grep -E '^=*.* (passed|failed|error)' | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*//')"
        echo "| $arch | $release | smoke | $(date -u +%F) | $commit | $(wheel_of "$logs/$arch-$release-build.log") | $([[ $status == 0 ]] || echo 'FAILED: ')${row:-no pytest summary} | $((SECONDS - started)) s |" >> "$logs/$arch.rows"
        [[ $status == 0 ]] || return 1
    done
}

# The repaired wheel's file name and size, as the build's log shows them (ls -l).
wheel_of() {
    grep -oE '[0-9]+ [A-Z][a-z]{2} +[0-9]+ [0-9:]+ repaired/[^ ]+\.whl' "$1" 2>/dev/null |
        awk '{ sub("repaired/", "", $5); printf "`%s` (%d KB)", $5, ($1 + 512) / 1024 }' || true
}

declare -A jobs=()
for arch in $archs; do
    arch_job "$arch" &
    jobs[$arch]=$!
done
failed=()
for arch in $archs; do
    wait "${jobs[$arch]}" || failed+=("$arch")
done
for log in "$logs"/*.log; do
    printf '\n=== tools/wheels.sh: %s\n' "$(basename "$log" .log)"
    cat "$log"
done
{
    echo "| arch | release | step | date | commit | wheel | result | time |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for arch in $archs; do cat "$logs/$arch.rows" 2>/dev/null || true; done
} > "$WHEELHOUSE/results.md"
printf '\n=== tools/wheels.sh: summary (also in %s)\n' "$WHEELHOUSE/results.md"
cat "$WHEELHOUSE/results.md"
ls -l "$WHEELHOUSE"/*.whl 2>/dev/null || true
if ((${#failed[@]})); then
    echo "=== tools/wheels.sh: failed for ${failed[*]}" >&2
    exit 1
fi
echo "=== tools/wheels.sh: all passed in $SECONDS s"
