import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_starting_django_imports_no_torch_so_forked_workers_inherit_no_cuda_state(tmp_path):
    """The web process and the qcluster parent load every app and URL; torch (and with it CUDA,
    bitsandbytes) may only come in inside a task."""
    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'mistudio.settings'; django.setup(); "
        "import mistudio.urls, training.tasks, training.admin, corpora.admin; "
        "heavy = [m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
