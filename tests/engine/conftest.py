"""The engine's tests run with no Django at all (`make test` runs them with `-p no:django`): the
suite-wide fixtures that set Django up for each test (a queue prefix, an empty queue, a data
folder in the settings) are nothing here. The engine takes paths and options as arguments."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def queue_apart():
    return None


@pytest.fixture(autouse=True)
def empty_queue():
    return None


@pytest.fixture(autouse=True)
def data_dir(tmp_path):
    return tmp_path / "data"
