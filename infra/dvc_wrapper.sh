#!/bin/sh
# Installed as .venv/bin/dvc. DVC lives in its own virtual environment (.venv-dvc) because its
# hydra/omegaconf pin ANTLR 4.9 while Dagster's selection parser needs ANTLR 4.13. Stage commands
# (`cxr stage ...`) must still find this environment's tools, so put its bin first on PATH.
here="$(cd "$(dirname "$0")" && pwd)"
PATH="$here:$PATH" exec "$here/../../.venv-dvc/bin/dvc" "$@"
