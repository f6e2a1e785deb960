"""The web process imports the engine; it must not pull in Django's opposite (torch, CUDA) or Django."""

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_engine_never_imports_django():
    result = run_python(
        "import engine.trainer, engine.activations.extract, engine.models.resolve, engine.evaluation.stats, engine.sae.export, "
        "engine.models.loading, engine.models.memory, engine.models.info, engine.devices, engine.text.corpus, engine.run, sys; "
        "assert not any(m.startswith('django') for m in sys.modules)"
    )
    assert result.returncode == 0, result.stderr


def test_importing_devices_does_not_import_torch():
    result = run_python("import engine.devices, sys; assert 'torch' not in sys.modules, 'torch was imported'")
    assert result.returncode == 0, result.stderr


def test_the_gpu_inventory_does_not_import_torch():
    result = run_python(
        "import engine.devices, sys; engine.devices.gpu_inventory(); engine.devices.system_memory(); "
        "assert 'torch' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr


def test_the_engine_tests_run_without_django(request):
    if request.config.pluginmanager.has_plugin("django"):
        pytest.skip("checked where the engine's tests run with -p no:django, as `make test` runs them")
    assert not [name for name in sys.modules if name == "django" or name.startswith("django.")]


def test_the_architecture_registry_lists_and_checks_requests_without_torch():
    result = run_python(
        "import engine.sae as a, sys; assert a.names() == ('relu', 'topk', 'batchtopk', 'jumprelu', 'matryoshka_batchtopk', 'gated', 'transcoder', 'skip_transcoder'), a.names(); "
        "assert a.check_request('topk', {'k': None, 'target_l0': None}, hidden_dim=8).startswith('k: required'); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    assert result.returncode == 0, result.stderr
