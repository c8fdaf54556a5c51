#!/usr/bin/env bash
# Configure the embedded DVC remote: a folder beside the checkout, in .dvc/config.local (per
# machine, not committed). For a shared remote (S3/MinIO, SSH, NFS) run instead, for example:
#   dvc remote add -d shared s3://bucket/cxr-dvc && dvc remote modify shared endpointurl http://minio:9000
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
remote="${CXR_DVC_REMOTE:-$root/.dvc_remote}"
dvc="${DVC:-$root/.venv/bin/dvc}"
mkdir -p "$remote"
cd "$root"
"$dvc" remote add --local --default --force localremote "$remote" >/dev/null
echo "DVC remote 'localremote' -> $remote (dvc push / dvc pull use it)"
