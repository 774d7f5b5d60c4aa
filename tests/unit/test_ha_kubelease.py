"""KubeLease without an API server: its answers to errors, and Lease objects the API server
itself would refuse (a proxy, an aggregated API, a bug): never a crash, free when
unreadable, nothing of the value in the message."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from wgcable.ha.kubelease import KubeLease
from wgcable.ha.lease import LeaseConflictError, LeaseRecord, LeaseUnavailableError


class Config:
    host = "https://10.0.0.1:6443"


class FakeClient:
    configuration = Config()


class FakeAPI:
    def __init__(self) -> None:
        self.obj: Any = None
        self.error: BaseException | None = None
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _answer(self, name: str, *args: Any, **kw: Any) -> Any:
        self.calls.append((name, args, kw))
        if self.error is not None:
            raise self.error
        return self.obj

    def get_namespaced_custom_object(self, *args: Any, **kw: Any) -> Any:
        return self._answer("get", *args, **kw)

    def create_namespaced_custom_object(self, *args: Any, **kw: Any) -> Any:
        return self._answer("create", *args, **kw)

    def replace_namespaced_custom_object(self, *args: Any, **kw: Any) -> Any:
        return self._answer("replace", *args, **kw)


def make() -> tuple[KubeLease, FakeAPI]:
    lease = KubeLease(FakeClient(), "submariner-operator", "submariner-gateway-lock", 3.0)
    api = FakeAPI()
    lease._api = api
    return lease, api


def lease_obj(spec: Any, rv: Any = "42") -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "submariner-gateway-lock", "resourceVersion": rv},
            "spec": spec}


GOOD = {"holderIdentity": "gw1", "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-01T00:00:10.500000Z", "leaseTransitions": 3}


def api_error(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = f'{{"message": "{message}"}}'
    return exc


def test_read_a_good_lease_with_its_version_and_the_request_timeout() -> None:
    lease, api = make()
    api.obj = lease_obj(GOOD)
    got = lease.read()
    assert got == LeaseRecord("gw1", 15.0, 1767225600.0, 1767225610.5, 3, "42")
    [(name, args, kw)] = api.calls
    assert (name, args) == ("get", ("coordination.k8s.io", "v1", "submariner-operator",
                                    "leases", "submariner-gateway-lock"))
    assert kw == {"_request_timeout": 3.0}


def test_read_missing_is_none() -> None:
    lease, api = make()
    api.error = api_error(404)
    assert lease.read() is None


@pytest.mark.parametrize("error", [
    api_error(403, "leases is forbidden"), api_error(500, "etcd down"), api_error(429),
    api_error(401), ApiException(status=0, reason="SSLError"),
    urllib3.exceptions.MaxRetryError(None, "/x", "Connection refused"),  # type: ignore[arg-type]
    urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out"),  # type: ignore[arg-type]
    OSError("network is unreachable"),
])
def test_read_failures_are_unavailable_and_name_the_server_and_the_lease(
    error: BaseException,
) -> None:
    lease, api = make()
    api.error = error
    with pytest.raises(LeaseUnavailableError) as info:
        lease.read()
    text = str(info.value)
    assert "https://10.0.0.1:6443" in text
    assert "Lease submariner-operator/submariner-gateway-lock" in text
    assert "\n" not in text


HOSTILE_SPECS = [
    {**GOOD, "holderIdentity": "gw1\x1b[31m\nERROR forged"},
    {**GOOD, "holderIdentity": "g" * 10000},
    {**GOOD, "holderIdentity": 7},
    {**GOOD, "leaseTransitions": -1},
    {**GOOD, "leaseTransitions": "3"},
    {**GOOD, "leaseTransitions": 2**40},
    {**GOOD, "leaseTransitions": True},
    {**GOOD, "leaseDurationSeconds": 1.5},
    {**GOOD, "renewTime": "garbage\nforged"},
    {**GOOD, "renewTime": "9" * 100000},
    {**GOOD, "renewTime": 1767225610},
    {**GOOD, "acquireTime": "2026-13-45T99:99:99Z"},
    "not an object",
    ["a", "list"],
]


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_read_a_hostile_lease_is_free_with_its_version_logged_once_and_escaped(
    spec: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    lease, api = make()
    api.obj = lease_obj(spec, rv="77")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            got = lease.read()
            assert got is not None
            assert got.holder == ""
            assert got.version == "77"  # replaceable by its version
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "taken as free" in messages[0]
    assert all(ch.isprintable() for ch in messages[0])
    assert "forged" not in messages[0]
    assert "ggggg" not in messages[0]
    assert len(messages[0]) < 400


def test_a_readable_lease_again_resets_the_complaint() -> None:
    lease, api = make()
    api.obj = lease_obj({**GOOD, "leaseTransitions": -1})
    assert lease.read() is not None
    assert lease._bad
    api.obj = lease_obj(GOOD)
    assert lease.read() is not None
    assert lease._bad == ""


@pytest.mark.parametrize("obj", [
    lease_obj(GOOD, rv=None), lease_obj(GOOD, rv=""), lease_obj(GOOD, rv=5),
    {"spec": GOOD}, "a string", None,
])
def test_an_answer_without_a_version_is_unavailable(obj: Any) -> None:
    lease, api = make()
    api.obj = obj
    with pytest.raises(LeaseUnavailableError):
        lease.read()


NEW = LeaseRecord("gw2", 15.0, 1767225600.0, 1767225610.5, 4)


def test_create_when_none_and_replace_by_version() -> None:
    lease, api = make()
    api.obj = lease_obj(NEW.spec(), rv="43")
    assert lease.write(NEW, None) == LeaseRecord("gw2", 15.0, 1767225600.0, 1767225610.5, 4,
                                                 "43")
    old = LeaseRecord("gw1", 15.0, 0.0, 0.0, 3, "42")
    lease.write(NEW, old)
    (c, cargs, _), (r, rargs, _) = api.calls
    assert c == "create"
    assert "resourceVersion" not in cargs[-1]["metadata"]
    assert cargs[-1]["spec"] == NEW.spec()
    assert r == "replace"
    assert rargs[4] == "submariner-gateway-lock"
    assert rargs[-1]["metadata"]["resourceVersion"] == "42"


@pytest.mark.parametrize(("status", "replaces"), [
    (409, None), (409, LeaseRecord("gw1", 15.0, 0.0, 0.0, 3, "42")),
    (404, LeaseRecord("gw1", 15.0, 0.0, 0.0, 3, "42")),  # deleted meanwhile
])
def test_write_conflicts(status: int, replaces: LeaseRecord | None) -> None:
    lease, api = make()
    api.error = api_error(status, "the object has been modified")
    with pytest.raises(LeaseConflictError):
        lease.write(NEW, replaces)


def test_write_a_record_without_a_version_is_a_conflict_not_a_blind_write() -> None:
    lease, api = make()
    with pytest.raises(LeaseConflictError):
        lease.write(NEW, LeaseRecord("gw1", 15.0, 0.0, 0.0, 3, ""))
    assert api.calls == []


@pytest.mark.parametrize("error", [
    api_error(403), api_error(422, "spec.leaseTransitions: Invalid value"), api_error(503),
    urllib3.exceptions.MaxRetryError(None, "/x", "Connection refused"),  # type: ignore[arg-type]
])
def test_write_failures_are_unavailable(error: BaseException) -> None:
    lease, api = make()
    api.error = error
    with pytest.raises(LeaseUnavailableError, match=r"https://10\.0\.0\.1:6443"):
        lease.write(NEW, None)


@pytest.mark.parametrize("name", ["", "a/b", "x\n", "n" * 300])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="object name"):
        KubeLease(FakeClient(), "submariner-operator", name)
