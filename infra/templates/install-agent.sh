#!/usr/bin/env bash
# Installs the modelfleet agent into /opt/modelfleet/venv (as root, ExecStartPre=+ of the agent units) from the agent
# bundle in the store and nothing else: no package index (docs/bootstrap.md). Fetches the bundle with the VM's own
# identity (fetch_object.py, standard library only), checks its sha256 from the user-data, then pip installs every
# wheel with --no-index --require-hashes (each checked against the bundle's requirements.txt) and the bundle's
# scripts. A marker named after the bundle's hash makes a rerun a no-op. Reads MODELFLEET_WHEEL_URI and
# MODELFLEET_WHEEL_SHA256 from /etc/modelfleet/agent.env; MODELFLEET_HOME and MODELFLEET_PYTHON have defaults.
set -euo pipefail

: "${MODELFLEET_WHEEL_URI:?MODELFLEET_WHEEL_URI is not set (see /etc/modelfleet/agent.env)}"
: "${MODELFLEET_WHEEL_SHA256:?MODELFLEET_WHEEL_SHA256 is not set (see /etc/modelfleet/agent.env)}"
home="${MODELFLEET_HOME:-/opt/modelfleet}"
python="${MODELFLEET_PYTHON:-/usr/bin/python3}"
venv="$home/venv"
marker="$home/installed-$MODELFLEET_WHEEL_SHA256"

# The sync and agent units both run this script; never let two runs build the venv at once.
exec 9>"$home/.install.lock"
flock 9
if [[ -f "$marker" && -x "$venv/bin/modelfleet" ]]; then
    exit 0
fi

echo "modelfleet: installing agent bundle ${MODELFLEET_WHEEL_URI##*/} (sha256 $MODELFLEET_WHEEL_SHA256)"
work=$(mktemp -d "$home/download.XXXXXX")
trap 'rm -rf "$work"' EXIT
bundle="$work/${MODELFLEET_WHEEL_URI##*/}"
"$python" "$home/fetch_object.py" "$MODELFLEET_WHEEL_URI" "$bundle"
if ! echo "$MODELFLEET_WHEEL_SHA256  $bundle" | sha256sum --check --status; then
    echo "modelfleet: $MODELFLEET_WHEEL_URI does not match sha256 $MODELFLEET_WHEEL_SHA256; refusing to install" >&2
    exit 1
fi
"$python" -m zipfile -e "$bundle" "$work/b"
# The wheels are for one Python (bundle.json): say so instead of pip's "no matching distribution".
"$python" -c 'import json, sys; w = json.load(open(sys.argv[1]))["python"]; h = "%d.%d" % sys.version_info[:2]
sys.exit(None if h == w else f"modelfleet: the agent bundle is for Python {w}, {sys.executable} is {h}")' \
    "$work/b/bundle.json"

rm -rf "$venv" "$home"/installed-*
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --isolated --no-index \
    --find-links "$work/b/wheels" --only-binary=:all: --require-hashes --requirement "$work/b/requirements.txt"
"$venv/bin/pip" check
install -m 0755 "$work/b/scripts/"* "$home/"
touch "$marker"
echo "modelfleet: agent installed in $venv"
