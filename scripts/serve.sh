#!/usr/bin/env bash
# The web server and one worker; Ctrl-C (or TERM) stops both.
set -u
PY=${PY:-.venv/bin/python}
export MISTUDIO_DEBUG=${MISTUDIO_DEBUG:-1}
# Workers decide CUDA availability through NVML so the forked parent never creates a context.
PYTORCH_NVML_BASED_CUDA_CHECK=1 "$PY" manage.py qcluster &
worker=$!
"$PY" manage.py runserver "${HOST:-127.0.0.1}:${PORT:-8001}" --noreload &
web=$!
stop() { trap - INT TERM EXIT; kill -TERM "$worker" "$web" 2>/dev/null; wait; }
trap stop INT TERM EXIT
wait -n
