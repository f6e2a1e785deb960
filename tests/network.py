"""No network beyond this machine for a test: `outside_network_blocked` makes every connection and
name look-up for a host other than the loopback fail at once, and records it, so a test that must
not reach the real Hugging Face hub fails (at teardown, if the code swallowed the error) when it
does. The loopback stays open: the fake hub (tests/fake_hub.py) and a closed local port, which
stands for a hub that cannot be reached, both live there. Processes the test starts are not
covered; give them HF_HUB_OFFLINE=1 or an HF_ENDPOINT on the loopback."""
import ipaddress
import socket

import pytest

LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def _loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def outside_network_blocked(monkeypatch):
    """The hosts the test tried to reach beyond the loopback (each attempt failed at once)."""
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(address[0])
            raise OSError(f"tests/network.py: this test may not reach {address[0]}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            attempts.append(host if isinstance(host, str) else host.decode())
            raise socket.gaierror(socket.EAI_NONAME, f"tests/network.py: this test may not look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"the test tried to reach {sorted(set(attempts))} beyond this machine"


def closed_local_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_hub(monkeypatch, outside_network_blocked):
    """huggingface_hub pointed at a closed loopback port, in this process and those it starts: the
    hub cannot be reached, and the real one is never asked (outside_network_blocked)."""
    from huggingface_hub import constants

    url = f"http://127.0.0.1:{closed_local_port()}"
    monkeypatch.setenv("HF_ENDPOINT", url)  # processes the test starts read it at import
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        from transformers.utils import hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
    except ImportError:
        pass
    return url
