"""train.data.hub: whether the hub is reachable is decided without touching the network when the user said
offline, and otherwise by dialling the endpoint's own host and port."""
import pytest


@pytest.mark.parametrize("offline", ["1", "true", "ON", " yes "])
def test_offline_env_means_unreachable_without_touching_the_network(offline, monkeypatch):
    import train.data.hub

    def no_network(*args, **kwargs):
        raise AssertionError("connected although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(train.data.hub.socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert train.data.hub.hub_reachable() is False


@pytest.mark.parametrize("endpoint, address", [
    ("http://mirror.local", ("mirror.local", 80)),
    ("https://mirror.local", ("mirror.local", 443)),
    ("https://mirror.local:8443/", ("mirror.local", 8443)),
    ("not a url", None),
])
def test_hub_probe_dials_the_endpoint_port(endpoint, address, monkeypatch):
    import contextlib

    import train.data.hub

    dialled = []
    monkeypatch.setattr(train.data.hub.socket, "create_connection",
                        lambda addr, timeout: dialled.append(addr) or contextlib.nullcontext())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert train.data.hub.hub_reachable() is (address is not None)
    assert dialled == ([address] if address else [])
