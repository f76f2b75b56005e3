#!/bin/sh
# Installs, with one apt-get run, the real software the tests use beside the Python packages:
#   sshfs, fuse3, openssh-server     network-share tests (tests/scenarios/test_shares.py)
#   libtiff-tools                    big-endian fax TIFFs written by libtiff (tests/images.py)
#   chromium, chromium-driver        the status page in a real browser
#   postgresql, python3-psycopg      the shared journal (tests/pg.py: a throwaway cluster made
#                                    with initdb; Debian 12's psycopg for .ci/run's Debian suite)
# Run by `make test` and .ci/run. Does nothing when all are there, or when it cannot install
# (not root, no apt-get): the tests that need a missing tool skip and say why.
set -u
need=
have() { command -v "$1" >/dev/null 2>&1; }
have sshfs || need="$need sshfs"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
[ -x /usr/lib/openssh/sftp-server ] || need="$need openssh-sftp-server"
have fusermount3 || have fusermount || need="$need fuse3"
have tiffcp || need="$need libtiff-tools"
have chromium || need="$need chromium"
have chromedriver || need="$need chromium-driver"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
[ -d /usr/lib/python3/dist-packages/psycopg ] || need="$need python3-psycopg"
[ -n "$need" ] || exit 0
if [ "$(id -u)" -ne 0 ] || ! have apt-get; then
    echo "tests/tools.sh: not installing$need (needs root and apt-get); the tests that need them skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# PostgreSQL without a cluster of its own (its postinst would make and start one): the tests
# make theirs with initdb.
mkdir -p /etc/postgresql-common
[ -e /etc/postgresql-common/createcluster.conf ] ||
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
started=$(date +%s)
apt-get -q update -o Acquire::Retries=3 >/dev/null &&
    apt-get -q install -y --no-install-recommends $need >/dev/null ||
    echo "tests/tools.sh: could not install$need; the tests that need them skip"
echo "tests/tools.sh: installed$need in $(($(date +%s) - started)) s"
exit 0
