"""Where the picture's data comes from: a store (a directory, or a broker API server), or a
lab on this machine.

A store gives every gateway's Gateway status and the published Endpoints, but no byte
counters (Submariner's Gateway object has none: they are in its metrics, and in our agent's
``<state-dir>/status.json``). A lab gives each agent's ``status.json``: the same status,
with the bytes, the time it was written and whether the agent runs.
"""

from __future__ import annotations

import time

from wgcable.graph.graphviz import GraphError
from wgcable.graph.model import GatewayReport, Picture, build_picture
from wgcable.lab.lab import Lab
from wgcable.store.base import StoreUnavailableError
from wgcable.store.open import StoreSpec, open_store

_MAX_ERRORS_SHOWN = 3


def _unreadable(errors: dict[str, str]) -> list[str]:
    if not errors:
        return []
    shown = sorted(errors)[:_MAX_ERRORS_SHOWN]
    more = len(errors) - len(shown)
    return [f"{len(errors)} unreadable Endpoint entries: {', '.join(shown)}"
            + (f" and {more} more" if more else "")]


def from_store(spec: StoreSpec) -> Picture:
    """The picture of what the store holds. GraphError when it cannot be read."""
    try:
        store = open_store(spec, create=False)
        try:
            statuses = store.read_statuses()
            snap = store.snapshot()
        finally:
            store.close()
    except (StoreUnavailableError, OSError) as exc:
        raise GraphError(f"store {spec.describe()}: {exc}") from None
    reports = [GatewayReport(st) for st in statuses.values()]
    return build_picture(reports, list(snap.endpoints.values()),
                         title=f"store: {spec.describe()}", notes=_unreadable(snap.errors))


def from_lab(lab: Lab) -> Picture:
    """The picture of a lab on this machine, from its agents' status files (with bytes)."""
    now = time.time()
    reports, notes = [], []
    for g in lab.candidates():
        st = lab.status(g)
        if st is None:
            notes.append(f"{g.hostname} ({g.cluster_id}): no status yet")
            continue
        reports.append(GatewayReport(st.gateway, st.transfer, age=now - st.updated,
                                     alive=lab.agent_alive(g)))
    endpoints = None
    if lab.state.store != "kubernetes":  # a lab's broker is reachable from its namespace only
        try:
            spec = StoreSpec(str(lab.store_dir))
            store = open_store(spec, create=False)
            try:
                snap = store.snapshot()
            finally:
                store.close()
            endpoints = list(snap.endpoints.values())
            notes += _unreadable(snap.errors)
        except (StoreUnavailableError, OSError) as exc:
            notes.append(f"store not read: {exc}")
    return build_picture(reports, endpoints, title=f"lab {lab.state.name}", notes=notes)
