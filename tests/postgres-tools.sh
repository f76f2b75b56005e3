#!/bin/sh
# Installs what the shared-journal tests need (tests/pg.py): Debian's PostgreSQL server, started
# by the tests as a throwaway cluster in a temporary folder, and python3-psycopg (Debian 12's
# 3.1.7, the driver .ci/run's Debian-library suite runs against; `make test` uses the venv's).
# Run by `make test` and .ci/run; does nothing when they are there, or when it cannot (not root,
# no apt-get): the tests then skip and say why.
set -u
need=
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"
[ -d /usr/lib/python3/dist-packages/psycopg ] || need="$need python3-psycopg"
[ -n "$need" ] || exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "postgres-tools: not installing$need (needs root and apt-get); PostgreSQL tests skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# No cluster of its own: the package's postinst would create and start one (policy-rc.d aside);
# the tests make theirs with initdb.
mkdir -p /etc/postgresql-common
[ -e /etc/postgresql-common/createcluster.conf ] ||
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
apt-get -q update -o Acquire::Retries=3 >/dev/null &&
    apt-get -q install -y --no-install-recommends $need >/dev/null ||
    echo "postgres-tools: could not install$need; PostgreSQL tests skip"
exit 0
