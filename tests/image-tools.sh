#!/bin/sh
# Installs libtiff's tools (tiffcp, tiffinfo, fax2tiff) for the conversion tests (big-endian
# fax TIFFs written by libtiff itself). Run by `make test` and .ci/run; does nothing when they
# are there, or when it cannot (not root, no apt-get): those tests then skip and say why.
set -u
command -v tiffcp >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "image-tools: not installing libtiff-tools (needs root and apt-get); big-endian TIFF tests skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -q update -o Acquire::Retries=3 >/dev/null &&
    apt-get -q install -y --no-install-recommends libtiff-tools >/dev/null ||
    echo "image-tools: could not install libtiff-tools; big-endian TIFF tests skip"
exit 0
