#!/usr/bin/env bash
# Installs the modelfleet agent into /opt/modelfleet/venv, as root, before the agent units start (ExecStartPre=+).
#   1. pinned dependencies from PyPI (requirements.txt beside this script; binary wheels only),
#   2. this repo's wheel, fetched from the store with the just-installed SDK and the VM's own identity
#      (GCE service account / EC2 instance profile), checked against the sha256 carried in the user-data,
#      then installed with --no-deps.
# Idempotent: a marker named after the wheel's hash makes a rerun (every unit start, every reboot) a no-op.
# Reads MODELFLEET_WHEEL_URI and MODELFLEET_WHEEL_SHA256 from the environment (/etc/modelfleet/agent.env).
set -euo pipefail

: "${MODELFLEET_WHEEL_URI:?MODELFLEET_WHEEL_URI is not set (see /etc/modelfleet/agent.env)}"
: "${MODELFLEET_WHEEL_SHA256:?MODELFLEET_WHEEL_SHA256 is not set (see /etc/modelfleet/agent.env)}"

home=/opt/modelfleet
venv="$home/venv"
marker="$home/installed-$MODELFLEET_WHEEL_SHA256"

# The sync and agent units both run this script; never let two runs build the venv at once.
exec 9>"$home/.install.lock"
flock 9

if [[ -f "$marker" && -x "$venv/bin/modelfleet" ]]; then
    exit 0
fi

echo "modelfleet: installing agent ${MODELFLEET_WHEEL_URI##*/} (sha256 $MODELFLEET_WHEEL_SHA256)"
rm -rf "$venv" "$home"/installed-*
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir --only-binary=:all: \
    --requirement "$home/requirements.txt"

work=$(mktemp -d "$home/download.XXXXXX")
trap 'rm -rf "$work"' EXIT
wheel="$work/${MODELFLEET_WHEEL_URI##*/}"

"$venv/bin/python" - "$MODELFLEET_WHEEL_URI" "$wheel" <<'PY'
import sys
from urllib.parse import urlsplit

uri, dest = sys.argv[1], sys.argv[2]
parts = urlsplit(uri)
bucket, key = parts.netloc, parts.path.lstrip("/")
if parts.scheme == "gs":
    from google.cloud import storage

    storage.Client().bucket(bucket).blob(key).download_to_filename(dest)
elif parts.scheme == "s3":
    import boto3

    boto3.client("s3").download_file(bucket, key, dest)
else:
    sys.exit(f"modelfleet: unsupported agent wheel URI {uri}")
PY

if ! echo "$MODELFLEET_WHEEL_SHA256  $wheel" | sha256sum --check --status; then
    echo "modelfleet: $MODELFLEET_WHEEL_URI does not match sha256 $MODELFLEET_WHEEL_SHA256; refusing to install" >&2
    exit 1
fi

"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --no-deps "$wheel"
"$venv/bin/pip" check
touch "$marker"
echo "modelfleet: agent installed in $venv"
