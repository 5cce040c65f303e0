#!/usr/bin/env bash
# Build the Debian packages: fleet-agent_X.Y.Z_<arch>.deb (the van) and
# fleet-ingest_X.Y.Z_<arch>.deb (the cloud). Usually run as `./run deb [agent|ingest]`.
#
#   packaging/build-deb.sh [agent|ingest|all] [--arch amd64|arm64] [--out DIR]
#                                                  (default: all, this machine's, dist/)
#
# X.Y.Z is pyproject.toml's version; <arch> is the build machine's (`dpkg
# --print-architecture`) unless --arch names another: `--arch arm64` on this amd64
# machine makes the package for a Raspberry Pi 4/5 running 64-bit Raspberry Pi OS
# (Bookworm). A foreign build installs the other architecture's wheels (pip's --platform,
# manylinux up to Bookworm's glibc 2.36) with pip --target, and cross-compiles the one
# dependency without a wheel, evdev, with the distribution's cross compiler
# (gcc-aarch64-linux-gnu) against that architecture's Python headers
# (libpython3.11-dev:arm64, multiarch): both installed with apt when missing. No code of
# the other architecture runs here; tests/test_deb.py checks every ELF file's machine.
#
# How the venv gets to /opt/<package> (docs/installer.md, "The package"): it is built
# here, in a staging root, with the system's /usr/bin/python3.X, then relocated: the only
# absolute paths a venv holds are the console scripts' shebangs, the activate scripts
# and pyvenv.cfg, rewritten below (the build fails if the staging path is left anywhere),
# and the byte code is compiled with the installed path. The alternative, making the
# venv in postinst from bundled wheels, was rejected: it needs pip to run on the van at
# install time, evdev has no wheel (a compiler and kernel headers on every van, or a
# wheel built here anyway), dpkg would not know the files (no `dpkg -S`, no clean
# removal) and a failed pip leaves a half-installed package. The price of building here:
# the package depends on the exact Python minor (python3.11 on Debian 12 / Raspberry Pi
# OS Bookworm) and on the build machine's architecture, both stated in its Depends and
# Architecture fields.
#
# Needs: dpkg-deb (dpkg), python3-venv; installed with apt when missing (as ./run does).
# Packages are built without fakeroot: `dpkg-deb --root-owner-group` makes every file
# root:root; the maintainer scripts create the users and set the owners that need one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'build-deb: %s\n' "$*" >&2; exit 1; }
usage() {
    echo "usage: packaging/build-deb.sh [agent|ingest|all] [--arch amd64|arm64] [--out DIR]" >&2
    exit 2
}

WHICH=all
OUT=$ROOT/dist
ARCH=""
while [ $# -gt 0 ]; do
    case "$1" in
        agent|ingest|all) WHICH=$1 ;;
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift ;;
        --arch) [ $# -ge 2 ] || usage; ARCH=$2; shift ;;
        -h|--help) usage ;;
        *) echo "build-deb: unknown argument: $1" >&2; usage ;;
    esac
    shift
done

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root or sudo to install: $*"
        sudo="sudo"
    fi
    say "installing OS packages: $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

command -v dpkg-deb >/dev/null || die "dpkg-deb not found: this builds Debian packages on Debian"
# The venv's interpreter is the distribution's, by its versioned name, so the venv
# points at /usr/bin/python3.X (what the Depends field names), never at a pyenv or the
# developer's .venv.
PY_MINOR=$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null) \
    || apt_install python3
PY_MINOR=$(/usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYTHON=/usr/bin/python$PY_MINOR
/usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python >= 3.11 is needed (Debian 12 / Raspberry Pi OS Bookworm have it)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install "python$PY_MINOR-venv"

VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
BUILD_ARCH=$(dpkg --print-architecture)
ARCH=${ARCH:-$BUILD_ARCH}
case "$ARCH" in
    amd64) MACHINE=x86_64 ;;
    arm64) MACHINE=aarch64 ;;
    *) die "--arch $ARCH: amd64 or arm64" ;;
esac
WORK=$(mktemp -d /tmp/fleet-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# The project's wheel, built once for both packages.
build_wheel() {
    say "building the fleet-gateway $VERSION wheel"
    "$PYTHON" -m venv "$WORK/buildenv"
    "$WORK/buildenv/bin/pip" install -q --upgrade pip >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "pip upgrade failed"; }
    # From a snapshot of the sources, not the checkout: setuptools builds in the source
    # tree (build/, *.egg-info), so a build in the checkout races any other build there
    # and any file that comes and goes while it copies (CI saw ENOENT mid-copy).
    mkdir -p "$WORK/src"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
            | tar -C "$ROOT" --null -T - --ignore-failed-read -cf - 2>/dev/null \
            | tar -C "$WORK/src" -xf -
    else
        tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
            --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$WORK/src" -xf -
    fi
    "$WORK/buildenv/bin/pip" wheel -q --no-deps -w "$WORK/wheel" "$WORK/src" >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "building the wheel failed"; }
    WHEEL=$(ls "$WORK"/wheel/fleet_gateway-*.whl)
}

# cross_wheels: the wheels pip cannot download for ARCH, built here into $WORK/cross.
# evdev publishes none: its C extension is compiled with the cross compiler against
# ARCH's Python headers and sysconfig (_PYTHON_SYSCONFIGDATA_NAME: the .so suffix and
# flags of that Python). Its generated ecodes.c reads the build machine's
# <linux/input-event-codes.h>; kinc/ makes the compiler see those same uapi headers
# (the cross sysroot's may be older and lack codes the generator found).
cross_wheels() {
    local triplet=$MACHINE-linux-gnu
    local sysconfig=/usr/lib/python$PY_MINOR/_sysconfigdata__$triplet.py
    if ! command -v "$triplet-gcc" >/dev/null || [ ! -f "$sysconfig" ]; then
        if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
            say "dpkg --add-architecture $ARCH (for its Python headers)"
            if [ "$(id -u)" -ne 0 ]; then sudo dpkg --add-architecture "$ARCH"; else dpkg --add-architecture "$ARCH"; fi
        fi
        apt_install "gcc-$triplet" "libpython$PY_MINOR-dev:$ARCH"
    fi
    say "cross-compiling evdev for $ARCH"
    "$WORK/buildenv/bin/pip" install -q setuptools wheel >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "installing setuptools in the build venv failed"; }
    mkdir -p "$WORK/kinc" "$WORK/cross"
    ln -sfn /usr/include/linux "$WORK/kinc/linux"
    _PYTHON_HOST_PLATFORM=linux-$MACHINE _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__$triplet \
        CC=$triplet-gcc LDSHARED="$triplet-gcc -shared" CFLAGS="-I$WORK/kinc" \
        "$WORK/buildenv/bin/pip" wheel -q --no-deps --no-binary :all: --no-build-isolation \
        -w "$WORK/cross" "evdev>=1.7" >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "cross-compiling evdev for $ARCH failed"; }
}

# foreign_install VENV EXTRA: fleet-gateway[EXTRA] and its dependencies for ARCH into
# VENV, made by `python3.X -m venv --without-pip` (its bin/python is a symlink to
# /usr/bin/python3.X, the same path on every architecture).
foreign_install() {
    local venv=$1 extra=$2 site=$1/lib/python$PY_MINOR/site-packages
    local platforms=() glibc
    for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_$MACHINE"); done
    platforms+=(--platform "manylinux2014_$MACHINE" --platform "linux_$MACHINE")
    # The van's extra needs evdev; built once for both packages of `all`.
    if [ "$extra" = van ] && ! compgen -G "$WORK/cross/evdev-*.whl" >/dev/null; then
        cross_wheels
    fi
    mkdir -p "$WORK/cross"
    "$WORK/buildenv/bin/pip" install -q --no-compile --disable-pip-version-check \
        --target "$site" --only-binary=:all: "${platforms[@]}" \
        --python-version "$PY_MINOR" --implementation cp --abi "cp${PY_MINOR/./}" \
        --abi abi3 --abi none --find-links "$WORK/cross" "$WHEEL[$extra]" \
        >"$WORK/pip.log" 2>&1 \
        || { cat "$WORK/pip.log" >&2; die "installing fleet-gateway[$extra] for $ARCH failed"; }
    # --target puts the console scripts in site-packages/bin, with the build venv's
    # interpreter in their shebang: into the venv's bin/, naming its own.
    local script
    for script in "$site"/bin/*; do
        [ -f "$script" ] || continue
        if head -c 2 "$script" | grep -q '#!'; then
            sed -i "1s|^#!.*|#!$venv/bin/python$PY_MINOR|" "$script"
        fi
        mv "$script" "$venv/bin/"
    done
    rmdir "$site/bin"
    # What a dependency pulled in for building, not running.
    rm -rf "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/pkg_resources \
        "$site"/_distutils_hack "$site"/distutils-precedence.pth
}

# make_venv STAGE PREFIX EXTRA: the project with EXTRA in a venv at STAGE/PREFIX that
# works once STAGE/PREFIX is installed as PREFIX.
make_venv() {
    local stage=$1 prefix=$2 extra=$3 venv=$1$2
    say "venv $prefix with fleet-gateway[$extra] for $ARCH"
    if [ "$ARCH" = "$BUILD_ARCH" ]; then
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install -q --no-compile --disable-pip-version-check \
            "$WHEEL[$extra]" >"$WORK/pip.log" 2>&1 \
            || { cat "$WORK/pip.log" >&2; die "installing fleet-gateway[$extra] failed"; }
        # dpkg owns this tree: nobody should pip-install into it on a van. (setuptools
        # is only in the venv because `python3.11 -m venv` puts it there.)
        "$venv/bin/pip" uninstall -q -y pip setuptools >/dev/null
    else
        "$PYTHON" -m venv --without-pip "$venv"
        foreign_install "$venv" "$extra"
    fi
    rm -f "$venv"/bin/activate.fish "$venv"/bin/activate.csh "$venv"/bin/Activate.ps1
    # The distribution's other commands: the simulator, and the other side's service,
    # whose libraries this venv does not hold.
    local own=${prefix#/opt/} cmd
    for cmd in fleet-agent fleet-ingest fleet-sim; do
        [ "$cmd" = "$own" ] || rm -f "$venv/bin/$cmd"
    done
    # Relocate: shebangs, activate, pyvenv.cfg name the staging path; name the real one.
    grep -lIr --null -F "$venv" "$venv/bin" "$venv/pyvenv.cfg" \
        | xargs -0 -r sed -i "s|$venv|$prefix|g"
    if grep -rIl -F "$stage" "$venv" >"$WORK/left" 2>/dev/null; then
        die "the staging path is left in: $(head -5 "$WORK/left" | tr '\n' ' ')"
    fi
    # Byte code compiled now, with the installed paths in it: the service cannot write
    # __pycache__ under ProtectSystem=strict, and would recompile at every start.
    # (The build machine's interpreter: byte code is the same on every architecture.)
    "$PYTHON" -m compileall -q -j 0 -s "$stage" -p / "$venv/lib" >/dev/null \
        || die "byte-compiling $prefix failed"
}

# write_control STAGE PACKAGE DEPENDS DESCRIPTION...
write_control() {
    local stage=$1 package=$2 depends=$3 summary=$4 body=$5
    local size
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    cat >"$stage/DEBIAN/control" <<EOF
Package: $package
Version: $VERSION
Architecture: $ARCH
Maintainer: Fleet gateway maintainers <fleet-gateway@example.com>
Section: misc
Priority: optional
Installed-Size: $size
Depends: $depends
Homepage: https://github.com/example/fleet-gateway
Description: $summary
$(printf '%s\n' "$body" | fold -s -w 78 | sed 's/ *$//; s/^/ /')
EOF
}

# The runtime the venv needs from the system; the venv's bin/python is a symlink to it.
BASE_DEPENDS="python$PY_MINOR, libc6, init-system-helpers (>= 1.50), passwd"

build_package() {
    local kind=$1 package=fleet-$1 stage="$WORK/$1-root"
    local prefix=/opt/$package src=$ROOT/packaging/$package
    mkdir -p "$stage/DEBIAN"
    if [ "$kind" = agent ]; then
        make_venv "$stage" "$prefix" van
        install -D -m 0644 "$ROOT/hw/udev/99-fleet-gateway.rules" \
            "$stage/lib/udev/rules.d/99-fleet-gateway.rules"
        install -D -m 0644 "$src/agent.toml" "$stage/etc/fleet-agent/agent.toml"
        echo /etc/fleet-agent/agent.toml >"$stage/DEBIAN/conffiles"
    else
        make_venv "$stage" "$prefix" ingest
        install -D -m 0644 "$src/ingest.toml" "$stage/etc/fleet-ingest/ingest.toml"
        echo /etc/fleet-ingest/ingest.toml >"$stage/DEBIAN/conffiles"
        # The CRL to a broker on this host: shipped, not enabled (docs/ingest.md).
        for unit in fleet-crl-sync.path fleet-crl-sync.service; do
            install -D -m 0644 "$ROOT/systemd/$unit" "$stage/lib/systemd/system/$unit"
        done
    fi
    install -D -m 0644 "$ROOT/systemd/$package.service" "$stage/lib/systemd/system/$package.service"
    mkdir -p "$stage/usr/bin"
    ln -s "$prefix/bin/$package" "$stage/usr/bin/$package"
    mkdir -p "$stage/usr/share/doc/$package"
    printf '%s\n' "fleet-gateway $VERSION: Apache License 2.0" \
        "On Debian systems the license is in /usr/share/common-licenses/Apache-2.0." \
        "The bundled Python libraries under $prefix carry their own licenses" \
        "(their *.dist-info directories)." >"$stage/usr/share/doc/$package/copyright"
    for script in postinst prerm postrm; do
        install -m 0755 "$src/$script" "$stage/DEBIAN/$script"
    done
    if [ "$kind" = agent ]; then
        write_control "$stage" "$package" "$BASE_DEPENDS" \
            "Fleet gateway agent for delivery vans (GNSS, scanners, signed PODs, MQTT)" \
            "The in-van agent of the fleet gateway: reads the GNSS receiver and the barcode scanners, signs proofs of delivery, keeps a durable outbox and publishes over MQTT with mutual TLS. The application is a self-contained Python venv under /opt/fleet-agent; the package adds the systemd unit, the udev rules for /dev/fleet/*, the fleet system user and /etc/fleet-agent/agent.toml. Provision a van with: fleet-agent provision --enroll URL --token TOKEN"
    else
        write_control "$stage" "$package" "$BASE_DEPENDS" \
            "Fleet gateway cloud ingest (MQTT workers, storage, HTTP API)" \
            "The cloud side of the fleet gateway: consumes the vans' uplink from Mosquitto, verifies and stores it (SQLite or PostgreSQL) and serves it over an HTTP API. The application is a self-contained Python venv under /opt/fleet-ingest; the package adds the systemd unit, the fleet-ingest system user and /etc/fleet-ingest/ingest.toml."
    fi
    local deb="$OUT/${package}_${VERSION}_${ARCH}.deb"
    say "dpkg-deb --build $deb"
    # zstd, not dpkg's default xz: on two shared CPUs xz had not finished the agent's
    # 180 MB venv after five minutes, zstd takes seconds. dpkg reads zstd since 1.21.18
    # (Debian 12 / Raspberry Pi OS Bookworm have 1.21.22), and the package targets
    # Bookworm anyway (python3.11). DEB_COMPRESSION=xz for the smallest download.
    dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-zstd}" --build "$stage" "$deb" >/dev/null
    ls -l "$deb" >&2
    echo "$deb"
}

umask 022
build_wheel
case "$WHICH" in
    agent|ingest) build_package "$WHICH" ;;
    all) build_package agent; build_package ingest ;;
esac
