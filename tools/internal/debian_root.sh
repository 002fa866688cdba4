# Shared by tools/debian_release.sh (native) and tools/arm_emulation.sh (qemu-user): make or
# reuse a cached Debian root of one release and architecture, then build the package in it
# with that release's Python and SQLite and run the suite (tools/internal/root_suite.sh, inside).
# Sourced, not run. Callers set RELEASE and ARCH (a Debian architecture), call
# root_enter_namespace "$@" first, then root_setup, root_ensure, root_mount and root_run.
#
# Environment:
#   DEBIAN_ROOTS        where roots and the pip cache live (default /var/cache/pyv-edge-agent-roots;
#                       must be outside the repository)
#   DEBIAN_MIRROR       mirror for debootstrap (default http://deb.debian.org/debian)
#   HOST_CA_BUNDLE      CA bundle pip inside the root trusts (default: $PIP_CERT, $SSL_CERT_FILE
#                       or /etc/ssl/certs/ca-certificates.crt)
#   ROOT_MAX_AGE_DAYS   a root older than this is remade, to pick up point releases (default 30)
#   FRESH=1             remake the root even if it is current
#   ROOT_ONLY=1         make (or check) the root and stop

# Bump when the way a root is made changes: every cached root is then remade.
ROOT_RECIPE_VERSION=2
# What every root needs to build and test: Python with headers and venv, a C compiler. The
# release's libsqlite3-0 comes with its python3. The test suite's own Debian packages
# (tools/internal/system-packages.txt) are added, so tests that need them run in the root too.
ROOT_BASE_PACKAGES=(python3 python3-dev python3-venv gcc libc6-dev ca-certificates)
# Packages only some roots need; a caller sets them after sourcing this file, before
# root_setup (the ARM roots: libffi-dev, to build cffi). They join the recipe, so adding
# them remakes those roots alone.
ROOT_EXTRA_PACKAGES=()
# Other Debian architectures whose packages the root may install (multiarch), named with
# ":ARCH" in ROOT_EXTRA_PACKAGES; and a name for a root whose recipe differs from the
# release's plain one (the cross-compiling root), so that it is cached beside that one
# rather than replacing it. Set by a caller before root_setup, as ROOT_EXTRA_PACKAGES is.
ROOT_FOREIGN_ARCHS=()
ROOT_FLAVOUR=""

log() { printf '\n=== [%s %s] %s\n' "$RELEASE" "$ARCH" "$*"; }

# Re-run the calling script in a private mount namespace: every mount it makes for the root
# disappears with it, even if it is killed, and parallel runs never see each other's /work.
root_enter_namespace() {
    if [[ -z "${PYV_ROOT_NAMESPACE:-}" ]]; then
        exec env PYV_ROOT_NAMESPACE=1 unshare --mount --propagation private "$BASH" "$0" "$@"
    fi
}

root_setup() {
    REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    ROOTS="${DEBIAN_ROOTS:-/var/cache/pyv-edge-agent-roots}"
    ROOT="$ROOTS/$RELEASE-$ARCH${ROOT_FLAVOUR:+-$ROOT_FLAVOUR}"
    MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    CA_BUNDLE="${HOST_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
    STAMP="$ROOT/.pyv-edge-agent-root"
    case "$ROOTS/" in
        "$REPO"/*) echo "DEBIAN_ROOTS must be outside the repository ($REPO)" >&2; exit 2 ;;
    esac
    if [[ $EUID -ne 0 ]]; then
        echo "$0 needs root (debootstrap, chroot, mounts)" >&2
        exit 2
    fi
    command -v debootstrap >/dev/null || bash "$REPO/tools/internal/system-deps.sh"
    # Read through a process substitution, whose failure would go unseen: check first.
    [[ -r "$REPO/tools/internal/system-packages.txt" ]] ||
        { echo "$REPO/tools/internal/system-packages.txt is missing" >&2; exit 2; }
    mapfile -t ROOT_PACKAGES < <(
        { printf '%s\n' "${ROOT_BASE_PACKAGES[@]}" "${ROOT_EXTRA_PACKAGES[@]}"
          sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' "$REPO/tools/internal/system-packages.txt"
        } | sort -u)
    RUN_DIR=""
    MOUNTS=()
    trap root_cleanup EXIT
}

# Everything a root is made from; a root whose stamp says otherwise is stale.
root_recipe() {
    printf 'recipe %s\nrelease %s\narch %s\nvariant minbase\nmirror %s\npackages %s\n' \
        "$ROOT_RECIPE_VERSION" "$RELEASE" "$ARCH" "$MIRROR" "${ROOT_PACKAGES[*]}"
    if ((${#ROOT_FOREIGN_ARCHS[@]})); then printf 'foreign %s\n' "${ROOT_FOREIGN_ARCHS[*]}"; fi
}

root_is_current() {
    [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(root_recipe)" ]] &&
        [[ -z "$(find "$STAMP" -mtime "+${ROOT_MAX_AGE_DAYS:-30}")" ]]
}

# Make the root unless a current one is cached. Every run holds a shared lock to its end,
# so a parallel run never remakes a root in use. A current root is checked under that
# shared lock (a long emulated suite must not hold up a wheel build in the same root); only
# making one takes the exclusive lock, and checks again once it has it.
root_ensure() {
    local started=$SECONDS packages foreign
    mkdir -p "$ROOTS"
    exec {ROOT_LOCK}>"$ROOT.lock"
    flock -s "$ROOT_LOCK"
    if [[ "${FRESH:-0}" != 1 ]] && root_is_current; then
        log "reusing $ROOT"
        return 0
    fi
    flock -u "$ROOT_LOCK"
    flock "$ROOT_LOCK"
    if [[ "${FRESH:-0}" != 1 ]] && root_is_current; then
        log "reusing $ROOT (made by a parallel run)"
    else
        log "making $ROOT (debootstrap $RELEASE, $ARCH)"
        rm -rf --one-file-system "$ROOT.new"
        packages="$(IFS=,; echo "${ROOT_BASE_PACKAGES[*]}")"
        debootstrap --arch="$ARCH" --variant=minbase --include="$packages" \
            "$RELEASE" "$ROOT.new" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 ||
            { tail -n 30 "$ROOT.debootstrap.log"; exit 1; }
        # The test suite's packages through apt, not --include: debootstrap cannot order
        # trixie's systemd (pulled in by mosquitto and tinyproxy) and gives up.
        cp /etc/resolv.conf "$ROOT.new/etc/resolv.conf"
        printf '#!/bin/sh\nexit 101\n' > "$ROOT.new/usr/sbin/policy-rc.d"  # start no services
        chmod +x "$ROOT.new/usr/sbin/policy-rc.d"
        if ((${#ROOT_FOREIGN_ARCHS[@]})); then
            for foreign in "${ROOT_FOREIGN_ARCHS[@]}"; do chroot "$ROOT.new" dpkg --add-architecture "$foreign"; done
            chroot "$ROOT.new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get update -q \
                >> "$ROOT.debootstrap.log" 2>&1 || { tail -n 30 "$ROOT.debootstrap.log"; exit 1; }
        fi
        chroot "$ROOT.new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${ROOT_PACKAGES[@]}" \
            >> "$ROOT.debootstrap.log" 2>&1 ||
            { tail -n 30 "$ROOT.debootstrap.log"; exit 1; }
        chroot "$ROOT.new" apt-get clean
        # Mount points for the run; the root itself is never written after this.
        mkdir -p "$ROOT.new/work" "$ROOT.new/pip-cache"
        touch "$ROOT.new/etc/ssl/certs/host-ca-bundle.crt" "$ROOT.new/etc/hosts" "$ROOT.new/etc/resolv.conf"
        rm -f "$ROOT.new"/var/cache/apt/archives/*.deb
        root_recipe > "$ROOT.new/.pyv-edge-agent-root"
        rm -rf --one-file-system "$ROOT"
        mv "$ROOT.new" "$ROOT"
        log "root made in $((SECONDS - started)) s"
    fi
    flock -s "$ROOT_LOCK"
}

root_bind() {
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
}

# A private /work (the checkout's files and the build), /tmp, the pip cache shared by runs,
# and the host's name resolution and CA bundle for pip; /proc, /sys and /dev for the suite.
root_mount() {
    RUN_DIR="$(mktemp -d "${TMPDIR:-/var/tmp}/pyv-root-run.XXXXXX")"
    mkdir -p "$RUN_DIR/work/src" "$RUN_DIR/work/home" "$RUN_DIR/tmp" "$ROOTS/pip-cache"
    chmod 1777 "$RUN_DIR/tmp"
    # Only what is in the checkout (tracked or new, not ignored): no build/, *.so or venvs.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 cp --parents -t "$RUN_DIR/work/src" 2>/dev/null || true)
    root_bind "$RUN_DIR/work" "$ROOT/work"
    root_bind "$RUN_DIR/tmp" "$ROOT/tmp"
    root_bind "$ROOTS/pip-cache" "$ROOT/pip-cache"
    root_bind /etc/resolv.conf "$ROOT/etc/resolv.conf"
    root_bind /etc/hosts "$ROOT/etc/hosts"
    root_bind "$CA_BUNDLE" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"
    mount -t proc proc "$ROOT/proc" && MOUNTS+=("$ROOT/proc")
    mount --rbind /sys "$ROOT/sys" && MOUNTS+=("$ROOT/sys")
    root_bind /dev "$ROOT/dev"
    root_bind /dev/pts "$ROOT/dev/pts"
    mount -t tmpfs tmpfs "$ROOT/dev/shm" && MOUNTS+=("$ROOT/dev/shm")
}

root_cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
    if [[ -n "$RUN_DIR" ]]; then rm -rf --one-file-system "$RUN_DIR"; fi
}

# Run one of the checkout's scripts inside the root with a clean environment. $1: its path
# in the checkout; the rest: VAR=value settings it reads.
root_script() {
    local script="$1"
    shift
    chroot "$ROOT" /usr/bin/env -i \
        HOME=/work/home PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
        SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt PIP_CACHE_DIR=/pip-cache \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_PROGRESS_BAR=off \
        ${HTTPS_PROXY:+"HTTPS_PROXY=$HTTPS_PROXY"} ${https_proxy:+"https_proxy=$https_proxy"} \
        ${NO_PROXY:+"NO_PROXY=$NO_PROXY"} ${no_proxy:+"no_proxy=$no_proxy"} \
        ${PIP_INDEX_URL:+"PIP_INDEX_URL=$PIP_INDEX_URL"} \
        "$@" /bin/bash "/work/src/$script"
}

# Build and test inside the root. $1: the machine (uname -m) the root must report; $2: the
# extras to install; $3: what pytest runs; the rest: extra pytest arguments.
root_run() {
    local machine="$1" extras="$2" suite="$3" quoted=""
    shift 3
    if (($#)); then quoted="$(printf '%q ' "$@")"; fi
    log "building and testing inside the root"
    root_script tools/internal/root_suite.sh EXPECT_MACHINE="$machine" EXTRAS="$extras" SUITE="$suite" \
        REQUIRE_SYSTEM_DEPS="${REQUIRE_SYSTEM_DEPS:-0}" PYTEST_ARGS="$quoted"
}

# The machine (uname -m) a root of a Debian architecture reports.
root_machine() {
    case "$1" in
        amd64) echo x86_64 ;;
        arm64) echo aarch64 ;;
        armhf) echo armv7l ;;
        *) echo "no machine known for Debian architecture $1" >&2; return 2 ;;
    esac
}

# A root of another architecture runs under qemu-user through binfmt_misc: install the
# host's qemu-user-static and binfmt-support if missing and check the handler. Call after
# root_setup; a no-op for the host's own architecture.
root_qemu_setup() {
    QEMU_BINFMT=""
    case "$ARCH" in
        "$(dpkg --print-architecture)") return 0 ;;
        arm64) QEMU_BINFMT=qemu-aarch64 ;;
        armhf) QEMU_BINFMT=qemu-arm ;;
        *) echo "no qemu-user handler known for $ARCH" >&2; exit 2 ;;
    esac
    local missing=()
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    [[ -e /usr/bin/$QEMU_BINFMT-static ]] || missing+=(qemu-user-static)
    if ((${#missing[@]})); then
        log "installing host tools: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static binfmt-support
    fi
    # Mounted in this run's private namespace; the handlers themselves are the kernel's.
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/$QEMU_BINFMT ]]; then
        update-binfmts --enable "$QEMU_BINFMT" || update-binfmts --import "$QEMU_BINFMT"
    fi
    if ! grep -q '^enabled' "/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"; then
        echo "binfmt handler $QEMU_BINFMT is not enabled" >&2
        exit 1
    fi
}

# The F flag makes the kernel open the interpreter at registration, so it works inside the
# chroot; without it, the interpreter is bound into the root for the run. After root_mount.
root_qemu_bind() {
    [[ -n "$QEMU_BINFMT" ]] || return 0
    local qemu="/usr/bin/$QEMU_BINFMT-static"
    if ! grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"; then
        echo "note: $QEMU_BINFMT lacks the F flag; binding the interpreter into the root" >&2
        [[ -e "$ROOT$qemu" ]] || touch "$ROOT$qemu"
        root_bind "$qemu" "$ROOT$qemu"
    fi
}
