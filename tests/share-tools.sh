#!/bin/sh
# Installs what tests/scenarios/test_shares.py needs for a real network file system: sshfs (FUSE) and an
# OpenSSH server, started by the tests on 127.0.0.1 only. Run by `make test` and .ci/run; does
# nothing when they are there, or when it cannot (not root, no apt-get, no /dev/fuse): the
# tests then skip and say why.
set -u
need=
command -v sshfs >/dev/null 2>&1 || need="$need sshfs"
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
[ -x /usr/lib/openssh/sftp-server ] || need="$need openssh-sftp-server"
command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 || need="$need fuse3"
[ -n "$need" ] || exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ ! -e /dev/fuse ]; then
    echo "share-tools: not installing$need (needs root, apt-get and /dev/fuse); share tests skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -q update -o Acquire::Retries=3 >/dev/null &&
    apt-get -q install -y --no-install-recommends $need >/dev/null ||
    echo "share-tools: could not install$need; share tests skip"
exit 0
