"""Where the picture's data comes from: a store (a directory, or a broker API server), or a
lab on this machine.

A store gives every gateway's Gateway status and the published Endpoints, but no byte
counters (Submariner's Gateway object has none: they are in its metrics, and in our agent's
``<state-dir>/status.json``). A lab gives each agent's ``status.json``: the same status,
with the bytes, the time it was written and whether the agent runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from wgcable.agent.statusfile import read_status_file
from wgcable.graph.graphviz import GraphError
from wgcable.graph.model import GatewayReport, Picture, build_picture
from wgcable.lab.lab import Lab
from wgcable.safetext import safe
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


def from_store(spec: StoreSpec, state_dirs: Sequence[str] = ()) -> Picture:
    """The picture of what the store holds; the agents' status files in ``state_dirs``
    (on this host) add their gateways' bytes and ages. GraphError when the store or a
    status file cannot be read."""
    try:
        store = open_store(spec, create=False)
        try:
            statuses = store.read_statuses()
            snap = store.snapshot()
        finally:
            store.close()
    except (StoreUnavailableError, OSError) as exc:
        raise GraphError(f"store {spec.describe()}: {exc}") from None
    local: dict[tuple[str, str], GatewayReport] = {}
    now = time.time()
    for d in state_dirs:
        try:
            agent = read_status_file(d)
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # a damaged file
            raise GraphError(f"--state-dir {safe(d, 200)}: no readable status file: "
                             f"{safe(str(exc), 200)}") from None
        ep = agent.gateway.local_endpoint
        local[(ep.cluster_id, ep.cable_name)] = GatewayReport(
            agent.gateway, agent.transfer, age=now - agent.updated)
    reports = []
    for st in statuses.values():
        ep = st.local_endpoint
        found = local.pop((ep.cluster_id, ep.cable_name), None)
        # The store's status, with the local file's bytes (the file may be newer or older).
        reports.append(GatewayReport(st) if found is None else
                       GatewayReport(st, found.transfer, age=found.age))
    reports += local.values()  # a local agent whose Gateway object is missing
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
