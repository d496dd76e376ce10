"""Heavy work off the head: where the driver-side Ray tasks of ``lstc prep`` and ``lstc eval`` run.

A job's driver runs on the head node, which on a GPU cluster is a small CPU-only machine
that also hosts the GCS, the dashboard and every job's driver. The work a driver would
otherwise do itself - indexing a benchmark (reading annotations, listing videos), scoring a
model in one process - runs in one Ray task instead, placed by :func:`off_head_options`:

* on a cluster with other alive nodes: ``label_selector={"ray.io/node-id": "!<head id>"}``
  (Ray's built-in node-id label; any node but the head, chosen by Ray's scheduler among
  them). The head is the node holding Ray's ``node:__internal_head__`` resource. A label
  rather than a custom resource, so that no cluster config has to declare anything;
* on a single node (a laptop, a one-node cluster): no constraint, the task runs there.

:func:`on_a_cluster` decides whether to use a task at all: when this process joins a Ray
cluster (``--address`` or ``RAY_ADDRESS``, which Ray sets in every job). A local command does
the work in-process: there is no head to keep light, and no Ray to start for it.
:func:`where_am_i` is what the task reports back, so the driver can say where it ran.
"""

from __future__ import annotations

import os
from typing import Any

#: Ray's label with a node's id (every node carries it)
NODE_ID_LABEL = "ray.io/node-id"
#: the resource only the head node has
HEAD_RESOURCE = "node:__internal_head__"


def on_a_cluster(address: str | None = None) -> bool:
    """Whether the driver-side work should run as a Ray task: this process joins a Ray
    cluster, i.e. an address is given or ``RAY_ADDRESS`` is set (as inside every Ray Job)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def off_head_options() -> dict[str, Any]:
    """``.options(...)`` for a task that must not load the head: a label selector excluding
    the head when another node is alive, nothing otherwise (Ray must be initialised)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    heads = [n["NodeID"] for n in alive if HEAD_RESOURCE in (n.get("Resources") or {})]
    if not heads or len(alive) == len(heads):
        return {}
    return {"label_selector": {NODE_ID_LABEL: f"!{heads[0]}"}}


def where_am_i() -> dict[str, str]:
    """The id and IP of the node this (task) process runs on."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def describe_node(where: dict[str, str]) -> str:
    """``node <ip> (<id>)``: the line drivers print for a task's node."""
    return f"node {where['node_ip']} ({where['node_id']})"


__all__ = [
    "HEAD_RESOURCE",
    "NODE_ID_LABEL",
    "describe_node",
    "off_head_options",
    "on_a_cluster",
    "where_am_i",
]
