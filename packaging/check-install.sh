#!/usr/bin/env bash
# Install the built .deb and check that what it promises is there: the unit (not enabled), the
# user (sysusers.d), the spool folders (tmpfiles.d), the conffile and its permissions, the
# secrets folder, the man page. Then purge it and check what purge removes and what it keeps.
#
#   packaging/check-install.sh root DEB   into a fresh, empty directory (dpkg --root); root only
#   packaging/check-install.sh host DEB   into this machine with apt-get (a throwaway CI machine)
#
# "root": nothing but the package in a new dpkg database, maintainer scripts run with
# DPKG_ROOT set (--force-script-chrootless), the way debhelper's sysusers, tmpfiles and systemd
# snippets support. Dependencies are not installed there (--force-depends): this checks the
# package's own files and scripts, with nothing left over from a previous install to hide a gap.
# "host": a real `apt-get install ./ingestd_*.deb`: Debian 12 resolves the Depends, every
# maintainer script runs for real, and the installed command runs on Debian's libraries.
set -euo pipefail

mode=${1:?usage: $0 root|host DEB}
deb=$(realpath "${2:?usage: $0 root|host DEB}")
cd "$(dirname "$0")/.."
REPO=$PWD
failures=0

ok() { printf '  ok    %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
check() {  # check DESCRIPTION COMMAND...
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then ok "$what"; else bad "$what"; printf '%s\n' "$out" | sed 's/^/        /'; fi
}

if [ "$mode" = root ]; then
    R=$(mktemp -d /tmp/ingestd-root.XXXXXX)
    trap 'rm -rf "$R" "$shims"' EXIT
    mkdir -p "$R/etc" "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers"
    touch "$R/var/lib/dpkg/status" "$R/var/lib/dpkg/available"
    # dh_python3's byte-compiling snippet is the one part that does not know DPKG_ROOT (Debian
    # 12): it would compile the host's files. Byte-compiling is checked by the host install.
    shims=$(mktemp -d)
    printf '#!/bin/sh\nexit 0\n' >"$shims/py3compile"
    cp "$shims/py3compile" "$shims/py3clean"
    chmod +x "$shims/py3compile" "$shims/py3clean"
    install_pkg() {
        PATH="$shims:$PATH" dpkg --root="$R" --force-script-chrootless --force-depends -i "$deb"
    }
    purge_pkg() {
        PATH="$shims:$PATH" dpkg --root="$R" --force-script-chrootless --purge ingestd
    }
    admindir=$R/var/lib/dpkg
else
    R=
    install_pkg() {
        DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "$deb"
    }
    purge_pkg() { DEBIAN_FRONTEND=noninteractive apt-get -q purge -y ingestd; }
    admindir=/var/lib/dpkg
fi

id_of() {  # id_of passwd|group NAME: the number in the target root's own database
    [ "$2" = root ] && { echo 0; return; }  # an empty root has no root entry, and needs none
    awk -F: -v n="$2" '$1 == n { print $3 }' "$R/etc/$1"
}
has_mode() {  # has_mode PATH MODE USER GROUP (names looked up in the target root)
    local want got
    want="$2 $(id_of passwd "$3") $(id_of group "$4")"
    got=$(stat -c '%a %u %g' "$R$1")
    [ "$got" = "$want" ] || { echo "$1: $got, want $want" >&2; return 1; }
}

echo "installing $(basename "$deb") ($mode${R:+: $R})"
install_pkg

echo "checking the installed package"
check "dpkg says installed" \
    sh -c "dpkg-query --admindir='$admindir' -W -f='\${Status}' ingestd | grep -qx 'install ok installed'"
check "unit /lib/systemd/system/ingestd.service (as in systemd/)" \
    cmp "$R/lib/systemd/system/ingestd.service" systemd/ingestd.service
check "unit is not enabled" \
    sh -c "! ls '$R'/etc/systemd/system/*.wants/ingestd.service"
check "unit rates 1.5 or better where installed" \
    systemd-analyze security --offline=true --threshold=15 ${R:+--root="$R"} ingestd.service
check "sysusers.d/ingestd.conf" cmp "$R/usr/lib/sysusers.d/ingestd.conf" systemd/ingestd.sysusers
check "tmpfiles.d/ingestd.conf" cmp "$R/usr/lib/tmpfiles.d/ingestd.conf" systemd/ingestd.tmpfiles
check "user ingestd: no login, home /var/lib/ingestd" \
    grep -Eq '^ingestd:x:[0-9]+:[0-9]+:[^:]*:/var/lib/ingestd:/usr/sbin/nologin$' "$R/etc/passwd"
check "group ingestd" grep -q '^ingestd:' "$R/etc/group"
check "/var/spool/ingestd 2750 ingestd:ingestd" has_mode /var/spool/ingestd 2750 ingestd ingestd
check "/var/spool/ingestd/inbox 2770 ingestd:ingestd" \
    has_mode /var/spool/ingestd/inbox 2770 ingestd ingestd
check "/var/spool/ingestd/done 2750 ingestd:ingestd" \
    has_mode /var/spool/ingestd/done 2750 ingestd ingestd
check "/var/spool/ingestd/failed 2750 ingestd:ingestd" \
    has_mode /var/spool/ingestd/failed 2750 ingestd ingestd
check "conffile /etc/ingestd/ingestd.yaml" \
    sh -c "dpkg-query --admindir='$admindir' -W -f='\${Conffiles}' ingestd | grep -q '^ /etc/ingestd/ingestd.yaml '"
check "/etc/ingestd/ingestd.yaml is config/ingestd.yaml" \
    cmp "$R/etc/ingestd/ingestd.yaml" config/ingestd.yaml
check "/etc/ingestd/ingestd.yaml 640 root:ingestd" \
    has_mode /etc/ingestd/ingestd.yaml 640 root ingestd
check "/etc/ingestd/secrets 700 root:root" has_mode /etc/ingestd/secrets 700 root root
check "/usr/bin/ingestd" test -x "$R/usr/bin/ingestd"
check "man page ingestd(8)" test -f "$R/usr/share/man/man8/ingestd.8.gz"
check "man page renders without warnings" sh -c \
    "out=\$(zcat '$R/usr/share/man/man8/ingestd.8.gz' | LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z 2>&1) && [ -z \"\$out\" ]"
check "copyright" test -f "$R/usr/share/doc/ingestd/copyright"

if [ "$mode" = host ]; then
    # The installed code on Debian's libraries, from a folder with no source tree in it.
    check "ingestd --version" sh -c 'cd / && ingestd --version | grep -q "^ingestd "'
    check "every module imports from /usr/lib/python3/dist-packages on Debian's libraries" sh -c \
        'cd / && /usr/bin/python3 -c "
import importlib, pkgutil, ingestd
assert ingestd.__file__.startswith(\"/usr/lib/python3/dist-packages/\"), ingestd.__file__
for m in pkgutil.walk_packages(ingestd.__path__, \"ingestd.\"):
    if not m.name.endswith(\".__main__\"):
        importlib.import_module(m.name)
"'
    check "the service user can read and check the shipped config" \
        sh -c 'cd / && runuser -u ingestd -- ingestd check -c /etc/ingestd/ingestd.yaml'
    check "byte-compiled by py3compile" \
        test -d /usr/lib/python3/dist-packages/ingestd/__pycache__
fi

echo "purging"
purge_pkg
check "package gone" sh -c "! dpkg-query --admindir='$admindir' -W -f='\${Status}' ingestd | grep -q installed"
check "unit gone" test ! -e "$R/lib/systemd/system/ingestd.service"
check "config and secrets gone" test ! -e "$R/etc/ingestd"
check "stat override gone" sh -c "! grep -q ingestd.yaml '$admindir/statoverride'"
check "spool kept (patient documents are never deleted)" test -d "$R/var/spool/ingestd/inbox"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
