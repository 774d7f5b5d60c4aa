"""The driver contract and the registry: drivers are found by name, unknown names list the rest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import wgcable.cable
from wgcable.cable import (
    Connection,
    ConnectionStatus,
    Driver,
    Endpoint,
    NATEndpointInfo,
    UnknownDriverError,
    driver_names,
    new_driver,
    register_driver,
    unregister_driver,
)

LOCAL = Endpoint(cluster_id="cluster1", private_ip="172.18.0.4", backend="fake")


class FakeDriver:
    """Keeps cables in a dict: enough to show the contract is satisfiable structurally."""

    def __init__(self, local_endpoint: Endpoint, **options: Any) -> None:
        self.local_endpoint = local_endpoint
        self.options = options
        self.cables: dict[str, Connection] = {}
        self.initialised = False

    @property
    def name(self) -> str:
        return "fake"

    def init(self) -> None:
        self.initialised = True

    def connect_to_endpoint(self, info: NATEndpointInfo) -> str:
        self.cables[info.endpoint.cluster_id] = Connection(
            endpoint=info.endpoint,
            status=ConnectionStatus.CONNECTING,
            using_ip=info.use_ip,
            using_nat=info.use_nat,
        )
        return info.use_ip

    def disconnect_from_endpoint(self, endpoint: Endpoint) -> None:
        self.cables.pop(endpoint.cluster_id, None)

    def get_connections(self) -> list[Connection]:
        return list(self.cables.values())

    def get_active_connections(self) -> list[Connection]:
        return self.get_connections()

    def cleanup(self) -> None:
        self.cables.clear()


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Collects names registered by a test and removes them afterwards."""
    added: list[str] = []
    yield added
    for name in added:
        unregister_driver(name)


def test_fake_driver_satisfies_the_protocol() -> None:
    driver: Driver = FakeDriver(LOCAL)
    assert isinstance(driver, Driver)
    assert not isinstance(object(), Driver)


def test_register_directly_and_build(names: list[str]) -> None:
    names.append("fake-direct")
    assert register_driver("fake-direct", FakeDriver) is FakeDriver
    driver = new_driver("fake-direct", LOCAL, psk="secret")
    assert isinstance(driver, FakeDriver)
    assert driver.local_endpoint is LOCAL
    assert driver.options == {"psk": "secret"}


def test_register_as_decorator(names: list[str]) -> None:
    names.append("fake-decorated")

    @register_driver("fake-decorated")
    def make(local_endpoint: Endpoint, **options: Any) -> FakeDriver:
        return FakeDriver(local_endpoint, **options)

    assert "fake-decorated" in driver_names()
    driver = new_driver("fake-decorated", LOCAL)
    remote = Endpoint(cluster_id="cluster2", private_ip="172.18.0.7")
    driver.init()
    assert driver.connect_to_endpoint(NATEndpointInfo(endpoint=remote, use_ip="172.18.0.7")) == (
        "172.18.0.7"
    )
    assert [c.endpoint.cluster_id for c in driver.get_active_connections()] == ["cluster2"]
    driver.disconnect_from_endpoint(remote)
    assert driver.get_connections() == []


def test_driver_names_are_sorted(names: list[str]) -> None:
    names.extend(["zz-fake", "aa-fake"])
    register_driver("zz-fake", FakeDriver)
    register_driver("aa-fake", FakeDriver)
    listed = driver_names()
    assert listed == sorted(listed)
    assert {"aa-fake", "zz-fake"} <= set(listed)


def test_unknown_name_lists_supported_names(names: list[str]) -> None:
    names.extend(["zz-fake", "aa-fake"])
    register_driver("zz-fake", FakeDriver)
    register_driver("aa-fake", FakeDriver)
    with pytest.raises(UnknownDriverError) as info:
        new_driver("strongswan", LOCAL)
    message = str(info.value)
    assert "'strongswan'" in message
    assert ", ".join(driver_names()) in message
    assert message.index("aa-fake") < message.index("zz-fake")
    assert info.value.supported == driver_names()
    assert isinstance(info.value, ValueError)


def test_unknown_name_with_empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wgcable.cable.driver._DRIVERS", {})
    with pytest.raises(UnknownDriverError, match="none registered"):
        new_driver("wireguard", LOCAL)


def test_same_factory_twice_is_fine(names: list[str]) -> None:
    names.append("fake-twice")
    register_driver("fake-twice", FakeDriver)
    register_driver("fake-twice", FakeDriver)
    assert driver_names().count("fake-twice") == 1


def test_other_factory_under_taken_name_is_refused(names: list[str]) -> None:
    names.append("fake-taken")
    register_driver("fake-taken", FakeDriver)
    with pytest.raises(ValueError, match="already registered"):
        register_driver("fake-taken", lambda ep, **kw: FakeDriver(ep, **kw))


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        register_driver("", FakeDriver)


def test_factory_returning_a_non_driver_is_caught(names: list[str]) -> None:
    names.append("fake-broken")
    register_driver("fake-broken", lambda ep, **kw: object())  # type: ignore[type-var]
    with pytest.raises(TypeError, match="not a Driver"):
        new_driver("fake-broken", LOCAL)


def test_unregister_forgets(names: list[str]) -> None:
    register_driver("fake-gone", FakeDriver)
    unregister_driver("fake-gone")
    unregister_driver("fake-gone")  # unknown names are ignored
    assert "fake-gone" not in driver_names()


def test_package_exports() -> None:
    for name in wgcable.cable.__all__:
        assert hasattr(wgcable.cable, name), name
