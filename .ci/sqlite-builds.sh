#!/usr/bin/env bash
# The SQLite builds CI tests the package against, made from the amalgamation
# that the sqlean.py sdist on PyPI carries, and kept in a cache directory
# ($HKN_SQLITE_CACHE, default /var/cache/hkn-sqlite) so a second run costs
# nothing.  Progress goes to stderr; the last line on stdout is the result.
#
#   sqlite-builds.sh shared VERSION
#       A shared libsqlite3.so.0 of SQLite VERSION (3.45.1, 3.47.0, 3.49.1,
#       3.50.4): prints the directory to put on LD_LIBRARY_PATH, where every
#       dynamically linked _sqlite3 then uses it.
#
#   sqlite-builds.sh static PYTHON
#       A _sqlite3 for PYTHON built the way python-build-standalone (uv's
#       interpreters) builds it: CPython's own Modules/_sqlite sources of the
#       same minor version (Debian's source package), SQLite 3.50.4 compiled
#       with -fvisibility=hidden into a static archive linked in with
#       --exclude-libs,ALL (so no sqlite3_* symbol is visible to dlsym), and
#       loadable extensions enabled.  Prints the directory to put on
#       PYTHONPATH, where it wins over lib-dynload.
#
# Needs a Debian machine as root (apt-get for the compiler and for the
# source package) and PyPI.
set -euo pipefail

CACHE=${HKN_SQLITE_CACHE:-/var/cache/hkn-sqlite}
START=$(date +%s)
say() { printf '[sqlite-builds %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# sqlean.py versions whose sdist carries each SQLite version.
sqlean_version() {
    case "$1" in
        3.45.1|3.47.0|3.49.1) echo "$1" ;;
        3.50.4) echo "3.50.4.5" ;;
        *) echo "no sqlean.py sdist known for SQLite $1" >&2; return 2 ;;
    esac
}

need_tools() {
    local missing=()
    command -v gcc >/dev/null || missing+=(build-essential)
    command -v nm >/dev/null || missing+=(binutils)
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The stock amalgamation of SQLite VERSION in $CACHE/src-VERSION (sqlean.py
# appends its own init code after the amalgamation's last line: cut it).
amalgamation() {
    local version=$1 dir=$CACHE/src-$1
    if [ -f "$dir/sqlite3.c" ]; then echo "$dir"; return; fi
    local sdist tmp
    sdist=$(sqlean_version "$version")
    tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
    say "fetching the sqlean.py $sdist sdist for SQLite $version"
    python3 -m pip download -q --no-binary :all: --no-deps -d "$tmp" "sqlean.py==$sdist" >&2
    tar -xzf "$tmp"/*.tar.gz -C "$tmp"
    local from
    from=$(dirname "$(ls "$tmp"/*/sqlite/sqlite3.c)")
    mkdir -p "$tmp/out"
    sed '/End of sqlite3\.c \*\*\*/q' "$from/sqlite3.c" > "$tmp/out/sqlite3.c"
    cp "$from/sqlite3.h" "$from/sqlite3ext.h" "$tmp/out/"
    if grep -qi sqlean "$tmp/out/sqlite3.c" "$tmp/out/sqlite3.h"; then
        echo "the amalgamation of sqlean.py $sdist still mentions sqlean" >&2; return 1
    fi
    local got
    got=$(sed -n 's/^#define SQLITE_VERSION[[:space:]]*"\(.*\)"/\1/p' "$tmp/out/sqlite3.h")
    [ "$got" = "$version" ] || { echo "sqlean.py $sdist carries SQLite $got, not $version" >&2; return 1; }
    rm -rf "$dir"
    mv "$tmp/out" "$dir"
    rm -rf "$tmp"
    echo "$dir"
}

# Options in the spirit of distribution and python-build-standalone builds.
SQLITE_OPTIONS=(-DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_FTS4 -DSQLITE_ENABLE_FTS5
                -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_DBSTAT_VTAB
                -DSQLITE_ENABLE_MATH_FUNCTIONS -DSQLITE_ENABLE_COLUMN_METADATA)

shared() {
    local version=$1 out=$CACHE/shared-$1
    if [ -f "$out/libsqlite3.so.0" ]; then echo "$out"; return; fi
    need_tools
    local src
    src=$(amalgamation "$version")
    say "compiling SQLite $version as libsqlite3.so.0"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    gcc -shared -fPIC -O2 "${SQLITE_OPTIONS[@]}" -Wl,-soname,libsqlite3.so.0 \
        "$src/sqlite3.c" -o "$out.tmp/libsqlite3.so.0" -lm -lpthread -ldl
    rm -rf "$out" && mv "$out.tmp" "$out"
    echo "$out"
}

# CPython's Modules/_sqlite for minor version $1 (Debian's source package;
# bookworm has 3.11).
cpython_sqlite_sources() {
    local minor=$1 dir=$CACHE/cpython-$1
    if [ -f "$dir/Modules/_sqlite/module.c" ]; then echo "$dir/Modules/_sqlite"; return; fi
    if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding deb-src entries"
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed -e 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
                > /etc/apt/sources.list.d/hkn-deb-src.sources
        else
            sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/hkn-deb-src.list
        fi
    fi
    apt-get update -qq
    local tmp
    tmp=$(mktemp -d "$CACHE/debsrc.XXXXXX")
    say "fetching Debian's python$minor source package"
    # The newest listed version can be missing from a mirror snapshot.
    local version ok=
    for version in $(apt-cache showsrc "python$minor" | awk '/^Version:/ {print $2}' | sort -rV | uniq); do
        if (cd "$tmp" && apt-get source -qq "python$minor=$version" >/dev/null 2>&1); then
            ok=$version; break
        fi
    done
    [ -n "$ok" ] || { echo "no python$minor source package on this machine's mirrors" >&2; return 2; }
    local tree
    tree=$(ls -d "$tmp"/python"$minor"-*/ | head -1)
    rm -rf "$dir"
    mkdir -p "$dir/Modules" "$dir/Include"
    cp -a "$tree/Modules/_sqlite" "$dir/Modules/"
    cp "$tree/Include/patchlevel.h" "$dir/Include/"
    rm -rf "$tmp"
    echo "$dir/Modules/_sqlite"
}

static() {
    local python=$1
    python=$(readlink -f "$(command -v "$python")")
    local minor full
    minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    full=$("$python" -c 'import platform; print(platform.python_version())')
    local version=3.50.4 out=$CACHE/static-$full
    local suffix include
    suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    if [ ! -f "$out/_sqlite3$suffix" ]; then
        need_tools
        local src module_src
        src=$(amalgamation "$version")
        module_src=$(cpython_sqlite_sources "$minor")
        local work
        work=$(mktemp -d "$CACHE/static.XXXXXX")
        say "compiling SQLite $version with hidden symbols"
        # Not SQLITE_ENABLE_LOAD_EXTENSION (that switches loading on for every
        # connection); loading is compiled in and off until asked for.
        gcc -c -O2 -fPIC -fvisibility=hidden "${SQLITE_OPTIONS[@]}" "$src/sqlite3.c" \
            -o "$work/sqlite3.o"
        ar rcs "$work/libsqlite3.a" "$work/sqlite3.o"
        say "compiling CPython $minor's Modules/_sqlite against it"
        local objects=() c
        for c in "$module_src"/*.c; do
            gcc -c -O2 -fPIC -I"$include" -I"$src" -I"$module_src" \
                -DPY_SQLITE_ENABLE_LOAD_EXTENSION=1 -DPY_SQLITE_HAVE_SERIALIZE=1 \
                "$c" -o "$work/$(basename "$c" .c).o"
            objects+=("$work/$(basename "$c" .c).o")
        done
        mkdir -p "$work/out"
        gcc -shared -o "$work/out/_sqlite3$suffix" "${objects[@]}" "$work/libsqlite3.a" \
            -Wl,--exclude-libs,ALL -lm -lpthread -ldl
        rm -rf "$out" && mv "$work/out" "$out"
        rm -rf "$work"
    fi
    # What makes it python-build-standalone-like, checked every time.
    local module=$out/_sqlite3$suffix
    if nm -D "$module" | grep -q ' sqlite3_'; then
        echo "$module shows sqlite3_* symbols to the dynamic linker" >&2; return 1
    fi
    if ldd "$module" | grep -q libsqlite3; then
        echo "$module links libsqlite3" >&2; return 1
    fi
    (cd / && PYTHONPATH=$out "$python" - "$module" "$version" <<'EOF'
import sqlite3, sys, _sqlite3
assert _sqlite3.__file__ == sys.argv[1], ("lib-dynload won over PYTHONPATH", _sqlite3.__file__)
assert sqlite3.sqlite_version == sys.argv[2], sqlite3.sqlite_version
conn = sqlite3.connect(":memory:")
conn.enable_load_extension(True)
conn.enable_load_extension(False)
conn.close()
EOF
    ) >&2
    echo "$out"
}

mkdir -p "$CACHE"
case "${1:-}" in
    shared) shared "${2:?usage: $0 shared VERSION}" ;;
    static) static "${2:?usage: $0 static PYTHON}" ;;
    *) echo "usage: $0 shared VERSION | static PYTHON" >&2; exit 2 ;;
esac
say "done"
