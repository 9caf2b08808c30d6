#!/usr/bin/env bash
# usage: .ci/sid-chroot.sh CHECKOUT DIR
#
# The newest CPython and SQLite, which no interpreter under pyenv here has:
# Debian unstable ("sid") carries the newest CPython releases (3.14, 3.15)
# linked against its newest SQLite (3.51+, whose own defence against stray
# closes changes what the hazard tests see), built with its newest gcc.  This
# makes a minimal sid system in DIR/sid with debootstrap, and runs README's
# test command (given as $TEST_COMMAND) inside it from a copy of CHECKOUT,
# once per CPython 3.14+ that sid has and once under the debug build of the
# first of them (and its fault-injection build), with HKN_WERROR passed
# through.
#
# sid moves: when it cannot be installed today (a broken mirror, a package
# in transition), the stage says so and exits 0 without testing; a CPython
# sid no longer carries is named and left out.  A build or test failure
# exits non-zero.  Needs root (debootstrap, chroot, mounts).
set -euo pipefail
checkout=$1
rootfs=$2/sid
: "${TEST_COMMAND:?TEST_COMMAND must be README.md test command}"
mirror=${HKN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
wanted_pythons=(3.14 3.15)

mounted=()
unmount_all() {
    # Innermost first.  Never leave the host's /dev bound below DIR: a later
    # `rm -rf DIR` would go through it (CI's cleanup also stays on one file
    # system).
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -R "${mounted[i]}" 2>/dev/null || umount -lR "${mounted[i]}" || true
    done
    mounted=()
}
trap unmount_all EXIT

skip() {
    echo "sid stage SKIPPED: $*"
    exit 0
}

if ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
        || skip "debootstrap could not be installed"
fi

start=$SECONDS
mkdir -p "$rootfs"
if ! debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        sid "$rootfs" "$mirror" > "$2/debootstrap.log" 2>&1; then
    tail -n 20 "$2/debootstrap.log"
    skip "debootstrap of sid failed (log above)"
fi
echo "sid system made in $((SECONDS - start)) s"

mount -t proc proc "$rootfs/proc"
mounted+=("$rootfs/proc")
mount --rbind /dev "$rootfs/dev"
mount --make-rslave "$rootfs/dev"
mounted+=("$rootfs/dev")
# This machine's certificate authorities (a TLS-intercepting proxy may sit
# between it and PyPI) and name servers.
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/host-ca-bundle.crt"
cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true

# Only the variables the run needs: the host's pip configuration names
# directories the chroot does not have.
env_in=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin
        PIP_CERT=/etc/ssl/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
        CI="${CI:-}" HKN_WERROR="${HKN_WERROR:-}" DEBIAN_FRONTEND=noninteractive)
in_sid() {
    chroot "$rootfs" /usr/bin/env -i "${env_in[@]}" "$@"
}

# The checkout's tracked files, at DIR inside the chroot.
copy_checkout() {           # copy_checkout DIR (a path inside the chroot)
    rm -rf "$rootfs$1"
    mkdir -p "$rootfs$1"
    (cd "$checkout" && git ls-files -z | xargs -0 cp --parents -t "$rootfs$1")
}

# README's test command run by PYTHON in a venv of its own (/opt/venv-TAG),
# from a copy of the checkout of its own (/work/src-TAG): no object built
# for one interpreter is ever linked for another.
test_command_in_sid() {     # test_command_in_sid PYTHON TAG
    local python=$1 tag=$2
    local src=/work/src-$tag
    copy_checkout "$src"
    in_sid "$python" -m venv "/opt/venv-$tag"
    in_sid /bin/sh -c ". /opt/venv-$tag/bin/activate && cd $src &&
                       python -m pip install -q --upgrade pip && $TEST_COMMAND"
}

tested=0
for minor in "${wanted_pythons[@]}"; do
    python=python$minor
    if ! in_sid apt-get install -y -qq --no-install-recommends \
            "$python" "$python-dev" "$python-venv" > "$2/apt-$minor.log" 2>&1; then
        echo "--- CPython $minor: not installable from sid today, left out"
        tail -n 3 "$2/apt-$minor.log"
        continue
    fi
    echo "--- $(in_sid "$python" -c 'import sys, sqlite3
print("CPython", sys.version.split()[0], "with SQLite", sqlite3.sqlite_version)'),"\
         "$(in_sid gcc --version | head -n 1), Debian sid"
    # sid's python links libsqlite3 dynamically, so the package takes the
    # symbols route.  Then, as the SQLite-versions stage does for older
    # libraries, the extension-API route on the same library: the guard
    # check and the tests of what the route reaches.
    test_command_in_sid "$python" "$minor"
    in_sid /bin/sh -c ". /opt/venv-$minor/bin/activate && cd /work/src-$minor &&
        python .ci/guard_check.py symbols &&
        HERMES_KANBAN_NATIVE_MODE=extension-api python .ci/guard_check.py extension-api &&
        HERMES_KANBAN_NATIVE_MODE=extension-api pytest -q -p no:cacheprovider \
            tests/test_routes.py tests/test_guard.py tests/test_hazards.py \
            tests/test_connection.py"
    tested=$((tested + 1))
done
[ "$tested" -gt 0 ] || skip "no CPython 3.14+ installable from sid today"

# The first of those versions once more as CPython's debug build (Py_DEBUG:
# the interpreter's own assertions, reference-count checks and debug
# allocator), which stops on C-API misuse that a release build lets pass.
minor=${wanted_pythons[0]}
if in_sid apt-get install -y -qq --no-install-recommends \
        "python$minor-dbg" "python$minor-venv" > "$2/apt-$minor-dbg.log" 2>&1; then
    echo "--- $(in_sid "python${minor}d" -c 'import sys
print("CPython", sys.version.split()[0], "debug build (abiflags " + sys.abiflags + ")")')"
    test_command_in_sid "python${minor}d" "${minor}d"
    # Error paths under the debug build's assertions: the fault-injection
    # build (csrc/faults.h), its own copy and venv, runs the fault tests.
    src=/work/src-${minor}d-faults
    copy_checkout "$src"
    in_sid "python${minor}d" -m venv "/opt/venv-${minor}d-faults"
    in_sid /bin/sh -c ". /opt/venv-${minor}d-faults/bin/activate && cd /work &&
                       python -m pip install -q --upgrade pip &&
                       HKN_FAULTS=1 python -m pip install -q '$src[test]' &&
                       pytest -q -p no:cacheprovider $src/tests/test_faults.py"
    tested=$((tested + 1))
else
    echo "--- CPython $minor debug build: not installable from sid today, left out"
    tail -n 3 "$2/apt-$minor-dbg.log"
fi
echo "sid stage: $tested interpreter(s) tested in $((SECONDS - start)) s"
