#!/bin/sh
# Installs Debian's chromium and chromium-driver for the status page's browser test
# (tests/scenarios/test_status_page_browser.py). Run by `make test`; does nothing when they are
# there, or when it cannot (not root, no apt-get): the browser test then skips and says why.
set -u
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser-tools: not installing chromium, chromium-driver (needs root and apt-get); browser test skips"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -q update -o Acquire::Retries=3 >/dev/null &&
    apt-get -q install -y --no-install-recommends chromium chromium-driver >/dev/null ||
    echo "browser-tools: could not install chromium, chromium-driver; browser test skips"
exit 0
