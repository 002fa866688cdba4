#!/usr/bin/env bash
# One command for the Linux wheels of every gateway, built here as cibuildwheel would: the
# sdist and the x86_64, aarch64 and armv7l wheels from it, all in one amd64 Debian bullseye
# root (glibc 2.31, Python 3.9) with Debian's cross compilers (no emulation, about a
# minute), each repaired by auditwheel, tagged manylinux_2_31 and checked
# (tools/internal/wheel_root.sh build). With --smoke, each wheel is then installed from a
# local index, binaries only, into a fresh venv in a clean root of each release named, for
# its own architecture (the ARM ones under qemu-user), and smoke-tested
# (tools/internal/wheel_root.sh smoke). A release other than bullseye has another Python,
# which the cp39 wheels do not fit: its wheels are built in its own cross root first.
#
# Usage (as root, on an amd64 Debian/Ubuntu host):
#   tools/wheels.sh                                        # the three wheels into wheelhouse/
#   tools/wheels.sh --arch "arm64 armhf" --smoke bullseye  # what .ci/run does
#   tools/wheels.sh --smoke "bullseye bookworm trixie"     # every arch on every release
#   tools/wheels.sh --smoke bullseye -- -k codec           # arguments after -- go to pytest
# The native smoke runs beside the emulated ones; the emulated ones run one at a time (each
# keeps a core busy). A summary table (date, commit, wheel and size, tests, time) ends the
# output and is kept in wheelhouse/results.md, for docs/wheels.md.
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

# The repaired wheel of one machine, its file name and size, as the build's log shows them (ls -l).
wheel_of() {
    grep -oE "[0-9]+ [A-Z][a-z]{2} +[0-9]+ [0-9:]+ repaired-$2/[^ ]+\.whl" "$1" 2>/dev/null |
        awk '{ sub("repaired-[a-z0-9_]+/", "", $5); printf "`%s` (%d KB)", $5, ($1 + 512) / 1024 }' || true
}

machine_of() {
    case "$1" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; armhf) echo armv7l ;; esac
}

# Bullseye first, each release once: every wheel of a release in one build.
releases="$(printf '%s\n' bullseye $smoke_releases | awk '!seen[$0]++' | tr '\n' ' ')"
failed=()
for release in $releases; do
    started=$SECONDS
    status=passed
    bash tools/internal/wheel_root.sh build "$archs" "$release" > "$logs/0-$release-build.log" 2>&1 || status=FAILED
    for arch in $archs; do
        echo "| $arch | $release | build (all archs in one, cross-compiled) | $(date -u +%F) | $commit | $(wheel_of "$logs/0-$release-build.log" "$(machine_of "$arch")") | $status | $((SECONDS - started)) s |" >> "$logs/$arch.rows"
    done
    [[ "$status" == passed ]] || failed+=("build-$release")
done

smoke() {
    local arch="$1" release="$2" started=$SECONDS status=0 row
    bash tools/internal/wheel_root.sh smoke "$arch" "$release" -- "${pytest_args[@]}" \
        > "$logs/1-$arch-$release-smoke.log" 2>&1 || status=$?
    row="$(tail -n 40 "$logs/1-$arch-$release-smoke.log" | grep -E '^=*.* (passed|failed|error)' | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ in [0-9.]*s.*//')"
    echo "| $arch | $release | smoke | $(date -u +%F) | $commit | $(wheel_of "$logs/0-$release-build.log" "$(machine_of "$arch")") | $([[ $status == 0 ]] || echo 'FAILED: ')${row:-no pytest summary} | $((SECONDS - started)) s |" >> "$logs/$arch.rows"
    return "$status"
}

# Each architecture's smoke runs through the releases in order; the native one beside the
# emulated chain, the emulated ones one after another.
smoke_chain() {
    local arch release status=0
    for arch in "$@"; do
        for release in $smoke_releases; do smoke "$arch" "$release" || status=1; done
    done
    return "$status"
}
if [[ -n "$smoke_releases" && ${#failed[@]} -eq 0 ]]; then
    native=() emulated=()
    for arch in $archs; do
        if [[ "$arch" == "$(dpkg --print-architecture)" ]]; then native+=("$arch"); else emulated+=("$arch"); fi
    done
    pids=()
    if ((${#native[@]})); then smoke_chain "${native[@]}" & pids+=($!); fi
    if ((${#emulated[@]})); then smoke_chain "${emulated[@]}" & pids+=($!); fi
    for pid in "${pids[@]}"; do wait "$pid" || failed+=(smoke); done
fi

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
    echo "=== tools/wheels.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "=== tools/wheels.sh: all passed in $SECONDS s"
