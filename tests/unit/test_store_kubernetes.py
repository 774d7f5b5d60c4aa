"""KubernetesStore's logic against a scripted fake of the custom-objects API (the real API
server is exercised in tests/broker): list + watch from resourceVersion, resume after a
dropped stream, relist after 410 Gone, back-off while unreachable, the cache kept meanwhile,
and error messages that never carry the bearer token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from wgcable.cable.types import Endpoint
from wgcable.store.base import StoreUnavailableError
from wgcable.store.kubernetes import KubernetesStore, _lines, describe_api_error

TOKEN = "s3cr3t-bearer-token"  # noqa: S105 (a fake, to check it never leaks)


def ep_obj(name: str, cid: str, rv: str, subnets: list[str] | None = None) -> dict[str, Any]:
    ep = Endpoint(cluster_id=cid, cable_name="c", hostname="h", private_ip="198.18.0.9",
                  subnets=subnets or ["10.9.0.0/16"], backend="wireguard")
    obj = ep.to_k8s_object("ns")
    obj["metadata"] |= {"name": name, "resourceVersion": rv}
    return obj


class FakeStream:
    def __init__(self, events: list[dict[str, Any]], then: BaseException | None) -> None:
        self.events, self.then = events, then

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        for e in self.events:
            data = (json.dumps(e) + "\n").encode()
            yield data[:7]  # events split across chunks, as on the wire
            yield data[7:]
        if self.then is not None:
            raise self.then

    def release_conn(self) -> None:
        pass


class FakeAPI:
    """Each call pops the next scripted result for its kind: a value, or an exception."""

    def __init__(self) -> None:
        self.lists: list[Any] = []
        self.watches: list[Any] = []
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                      **kw: Any) -> Any:
        if kw.get("watch"):
            self.calls.append(("watch", kw.get("resource_version", "")))
            if not self.watches:
                self.done.set()
                raise ConnectionRefusedError("script over")
            result = self.watches.pop(0)
        else:
            self.calls.append(("list", ""))
            result = self.lists.pop(0) if self.lists else ConnectionRefusedError("no list")
        if isinstance(result, BaseException):
            raise result
        return result


class Config:
    def __init__(self) -> None:
        self.host = "https://198.18.0.250:6443"
        self.api_key = {"authorization": f"Bearer {TOKEN}"}


class FakeClient:
    def __init__(self) -> None:
        self.configuration = Config()


def make_store(api: FakeAPI) -> KubernetesStore:
    store = KubernetesStore("ns", api_client=FakeClient(), backoff_initial=0.001,
                            backoff_max=0.002)
    store._api = api
    return store


def run_watch(store: KubernetesStore, api: FakeAPI) -> int:
    calls = 0
    stop = threading.Event()

    def changed() -> None:
        nonlocal calls
        calls += 1

    t = threading.Thread(target=store.watch, args=(changed, stop))
    t.start()
    assert api.done.wait(5)
    stop.set()
    store.close()
    t.join(5)
    assert not t.is_alive()
    return calls


def test_list_then_watch_from_its_version_then_resume_after_a_drop() -> None:
    api = FakeAPI()
    api.lists = [{"metadata": {"resourceVersion": "10"},
                  "items": [ep_obj("a-c", "a", "5")]}]
    api.watches = [
        FakeStream([{"type": "ADDED", "object": ep_obj("b-c", "b", "11")},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}],
                   then=ConnectionResetError("peer reset")),
        FakeStream([{"type": "DELETED", "object": ep_obj("a-c", "a", "16")}], then=None),
    ]
    store = make_store(api)
    changes = run_watch(store, api)
    # Resumed from the bookmark's version, not from the list's; never listed again.
    assert api.calls[:3] == [("list", ""), ("watch", "10"), ("watch", "15")]
    assert api.calls.count(("list", "")) == 1
    assert set(store.snapshot().endpoints) == {"b-c"}
    assert changes == 3  # the first list, the add, the delete (not the bookmark)


@pytest.mark.parametrize("gone", ["exception", "event"])
def test_410_gone_lists_again(gone: str) -> None:
    api = FakeAPI()
    api.lists = [
        {"metadata": {"resourceVersion": "10"}, "items": [ep_obj("a-c", "a", "5")]},
        {"metadata": {"resourceVersion": "90"}, "items": [ep_obj("z-c", "z", "80")]},
    ]
    expired: Any = (ApiException(status=410, reason="Gone") if gone == "exception" else
                    FakeStream([{"type": "ERROR", "object": {"code": 410}}], then=None))
    api.watches = [expired, FakeStream([], then=None)]
    store = make_store(api)
    run_watch(store, api)
    assert api.calls[:4] == [("list", ""), ("watch", "10"), ("list", ""), ("watch", "90")]
    assert set(store.snapshot().endpoints) == {"z-c"}


def test_unreachable_keeps_the_cache_and_says_why() -> None:
    api = FakeAPI()
    api.lists = [{"metadata": {"resourceVersion": "10"}, "items": [ep_obj("a-c", "a", "5")]}]
    api.watches = [ConnectionRefusedError("refused")] * 3
    store = make_store(api)
    run_watch(store, api)
    assert set(store.snapshot().endpoints) == {"a-c"}  # last known state, not empty
    assert "unreachable" in store.problem
    assert api.calls.count(("list", "")) == 1  # resumed with the version each time


def test_snapshot_before_any_list_raises_when_unreachable() -> None:
    store = make_store(FakeAPI())
    with pytest.raises(StoreUnavailableError, match=r"unreachable|listing"):
        store.snapshot()


def test_bad_objects_are_reported_by_name_and_do_not_hide_the_others() -> None:
    api = FakeAPI()
    bad = ep_obj("bad-c", "bad", "6")
    bad["spec"]["subnets"] = "10.0.0.0/8"  # not a list
    api.lists = [{"metadata": {"resourceVersion": "10"},
                  "items": [ep_obj("a-c", "a", "5"), bad, {"no": "metadata"}]}]
    snap = make_store(api).snapshot()
    assert set(snap.endpoints) == {"a-c"}
    assert "subnets" in snap.errors["bad-c"]
    assert "ns/bad-c" in snap.errors["bad-c"]


def test_unchanged_objects_are_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeAPI()
    listing = {"metadata": {"resourceVersion": "10"}, "items": [ep_obj("a-c", "a", "5")]}
    api.lists = [listing, listing]
    store = make_store(api)
    store._relist()
    first = store.snapshot().endpoints["a-c"]
    store._relist()
    assert store.snapshot().endpoints["a-c"] is first


def test_error_messages_carry_status_and_message_but_never_the_token() -> None:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"message": 'endpoints is forbidden: User "x" cannot list'})
    exc.headers = {"Authorization": f"Bearer {TOKEN}"}
    text = describe_api_error(exc)
    assert text == 'HTTP 403 Forbidden: endpoints is forbidden: User "x" cannot list'
    assert TOKEN not in text


def test_lines_reassembles_events_split_across_chunks() -> None:
    class R:
        def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
            yield from (b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}')

    assert list(_lines(R())) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
