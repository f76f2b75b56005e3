#!/usr/bin/env bash
# Build the Debian package from this work tree, without touching it: the tracked (and untracked,
# not ignored) files are copied to build/deb/ingestd-VERSION/, packaging/debian/ becomes its
# debian/, dpkg-buildpackage runs there, and the .deb, .buildinfo and .changes land in dist/.
#
#   packaging/build-deb.sh          build (make deb)
#   packaging/build-deb.sh deps     install the build dependencies with apt (make deb-deps; root)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build/deb
DIST=$ROOT/dist

say() { printf '==> %s\n' "$*"; }

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
changelog=$(sed -n '1s/^ingestd (\([^)]*\)).*/\1/p' packaging/debian/changelog)
if [ -z "$version" ] || [ "$version" != "$changelog" ]; then
    echo "packaging/debian/changelog is at ${changelog:-?}, pyproject.toml at ${version:-?}:" >&2
    echo "add a changelog entry for $version first (a native package: no Debian revision)" >&2
    exit 1
fi

src=$BUILD/ingestd-$version
say "preparing $src"
rm -rf "$BUILD"
mkdir -p "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # What a fresh clone has, plus new files not yet committed (never ignored ones: .venv, dist).
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null --no-recursion -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.mypy_cache --exclude=.ruff_cache -cf - . | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -a packaging/debian "$src/debian"

if [ "${1:-build}" = "deps" ]; then
    say "installing the build dependencies of $src/debian/control"
    export DEBIAN_FRONTEND=noninteractive
    apt-get build-dep -y --no-install-recommends "$src"
    exit 0
fi

# The Debian toolchain, not a virtual environment or pyenv shim that happens to be first on PATH:
# pybuild calls python3.11 by name and must get /usr/bin/python3.11 with Debian's libraries.
say "dpkg-buildpackage -us -uc -b (in $src)"
(
    cd "$src"
    env -u VIRTUAL_ENV -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        dpkg-buildpackage -us -uc -b
)

mkdir -p "$DIST"
for f in "$BUILD"/ingestd_"$version"*; do
    [ -f "$f" ] || continue
    mv -f "$f" "$DIST/"
    say "dist/$(basename "$f")"
done
