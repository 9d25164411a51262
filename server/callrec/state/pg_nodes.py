"""The node registry and call ownership in PostgreSQL (cluster mode, SPEC §8).

Each node has a row in `nodes` with a lease that its heartbeat extends (`lease_s`, renewed every
third of it). A node whose lease lapsed is dead to the others: within `lease_s` of its last
heartbeat, which is how SPEC §8's "detected within 30 s" holds with the default 15 s.

`call_owners` has one row per open call. `claim()` is one INSERT ... ON CONFLICT DO UPDATE whose
update happens only when the row is this node's already or its owner's lease lapsed; PostgreSQL
locks the conflicting row for the statement, so two nodes racing for one call get one owner, and a
dead node's call goes to the first node its gateway re-opens it on. Times are the database's own
(`now()`), so nodes' clocks do not need to agree.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from callrec.cancellation import honour_cancellation
from callrec.core.errors import CallrecError, FailedPrecondition
from callrec.logs import get_logger
from callrec.state.postgres import PostgresDatabase

__all__ = ["NodeInfo", "PgNodeRegistry"]

log = get_logger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """A node as the registry knows it."""

    node_id: str
    advertise: str
    heartbeat_at: datetime
    alive: bool
    load: float = 0.0
    """The load it advertised with its last heartbeat (1.0 = all it keeps at real time)."""


class PgNodeRegistry:
    """This node's lease, the cluster's live nodes, and which node owns each call (`CallOwnershipPort`)."""

    def __init__(self, db: PostgresDatabase, node_id: str, advertise: str, *, lease_s: float = 15.0,
                 load: Callable[[], float] | None = None) -> None:
        if not node_id:
            raise ValueError("a cluster node needs a node_id (--node-id)")
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.db = db
        self.node_id = node_id
        self.advertise = advertise
        self.lease_s = lease_s
        self.load = load
        """The node's admission load (1.0 = all it keeps at real time), advertised with each heartbeat."""
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Insert or refresh this node's row and lease (at start, and on every heartbeat)."""
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO nodes (node_id, advertise, started_at, heartbeat_at, lease_expires_at) "
                "VALUES (%s, %s, now(), now(), now() + make_interval(secs => %s)) "
                "ON CONFLICT (node_id) DO UPDATE SET advertise = excluded.advertise, started_at = excluded.started_at, "
                "heartbeat_at = now(), lease_expires_at = excluded.lease_expires_at",
                (self.node_id, self.advertise, self.lease_s),
            )

    async def heartbeat(self) -> None:
        """Extend this node's lease by `lease_s` from now."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE nodes SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => %s), "
                "capacity = 1.0, load = %s WHERE node_id = %s",
                (self.lease_s, self.load() if self.load is not None else 0.0, self.node_id),
            )

    def start(self) -> None:
        """Heartbeat in the background every third of the lease (a failed beat is logged, then retried)."""
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="node-heartbeat")

    async def _beat(self) -> None:
        failing = False
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.heartbeat()
                if failing:
                    log.info("node heartbeat restored", node_id=self.node_id)
                failing = False
            except CallrecError as exc:
                if not failing:
                    log.error("node heartbeat failed; other nodes will take over this node's calls if its lease "
                              "lapses", node_id=self.node_id, error=exc.message)
                failing = True

    async def stop(self) -> None:
        """Stop heartbeating and give the lease up (a drained node's calls may go elsewhere at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(CallrecError):
            async with self.db.connection() as conn:
                await conn.execute("UPDATE nodes SET lease_expires_at = now() WHERE node_id = %s", (self.node_id,))

    async def nodes(self) -> list[NodeInfo]:
        """Every registered node and whether its lease holds now."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT node_id, advertise, heartbeat_at, lease_expires_at > now() AS alive, load FROM nodes "
                "ORDER BY node_id"
            )
            rows = await cur.fetchall()
        return [NodeInfo(r["node_id"], r["advertise"], r["heartbeat_at"], bool(r["alive"]), float(r["load"]))
                for r in rows]

    async def claim(self, server_call_id: str) -> None:
        """Own the call, unless another node with a live lease does (FailedPrecondition naming it)."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO call_owners AS o (server_call_id, node_id, claimed_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (server_call_id) DO UPDATE SET node_id = excluded.node_id, claimed_at = now() "
                "WHERE o.node_id = excluded.node_id OR NOT EXISTS "
                "(SELECT 1 FROM nodes n WHERE n.node_id = o.node_id AND n.lease_expires_at > now()) "
                "RETURNING node_id",
                (server_call_id, self.node_id),
            )
            claimed = await cur.fetchone()
            if claimed is not None:
                return
            cur = await conn.execute(
                "SELECT o.node_id, n.advertise FROM call_owners o LEFT JOIN nodes n USING (node_id) "
                "WHERE o.server_call_id = %s",
                (server_call_id,),
            )
            owner = await cur.fetchone()
        who = f"node {owner['node_id']!r} ({owner['advertise']})" if owner else "another node"
        raise FailedPrecondition(
            f"call {server_call_id!r} is recorded by {who}, which is alive; open it there (send the header "
            "x-callrec-server-call-id so the proxy routes every stream of a call to one node), or wait until "
            "that node's lease lapses"
        )

    async def release(self, server_call_id: str) -> None:
        """Forget the call's owner if it is still this node (the call ended here)."""
        async with self.db.connection() as conn:
            await conn.execute(
                "DELETE FROM call_owners WHERE server_call_id = %s AND node_id = %s", (server_call_id, self.node_id)
            )

    async def node_of_recording(self, recording_id: str) -> NodeInfo | None:
        """The live node, other than this one, that records the recording (None: none such)."""
        return await self._live_node(
            "SELECT n.node_id, n.advertise, n.heartbeat_at, true AS alive FROM recordings r JOIN nodes n "
            "USING (node_id) WHERE r.recording_id = %s AND n.node_id <> %s AND n.lease_expires_at > now()",
            recording_id,
        )

    async def node_of_call(self, server_call_id: str) -> NodeInfo | None:
        """The live node, other than this one, that owns the call (None: none such)."""
        return await self._live_node(
            "SELECT n.node_id, n.advertise, n.heartbeat_at, true AS alive FROM call_owners o JOIN nodes n "
            "USING (node_id) WHERE o.server_call_id = %s AND n.node_id <> %s AND n.lease_expires_at > now()",
            server_call_id,
        )

    async def node_with_failed_uploads(self, recording_id: str) -> NodeInfo | None:
        """A live node, other than this one, whose spool holds failed uploads of the recording (None: none)."""
        return await self._live_node(
            "SELECT n.node_id, n.advertise, n.heartbeat_at, true AS alive FROM uploads u JOIN nodes n "
            "USING (node_id) WHERE u.group_id = %s AND u.state = 'failed' AND n.node_id <> %s "
            "AND n.lease_expires_at > now() ORDER BY u.id LIMIT 1",
            recording_id,
        )

    async def node_of_chunk(self, location: str) -> NodeInfo | None:
        """The live node, other than this one, that stored the live chunk a location names (None: none such)."""
        return await self._live_node(
            "SELECT n.node_id, n.advertise, n.heartbeat_at, true AS alive FROM chunks c JOIN nodes n USING (node_id) "
            "WHERE %(key)s IN (c.content_location, c.metadata_location, c.delete_location) AND c.deleted_at IS NULL "
            "AND n.node_id <> %(me)s AND n.lease_expires_at > now() LIMIT 1",
            location,
        )

    async def least_loaded(self, below: float) -> NodeInfo | None:
        """The live node other than this one with the lowest advertised load under `below` (None: all are
        full). The load is as of each node's last heartbeat, so the node chosen still checks its own."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT node_id, advertise, heartbeat_at, load FROM nodes WHERE node_id <> %s "
                "AND lease_expires_at > now() AND load < %s ORDER BY load, node_id LIMIT 1",
                (self.node_id, below),
            )
            row = await cur.fetchone()
        return NodeInfo(row["node_id"], row["advertise"], row["heartbeat_at"], True, float(row["load"])) if row \
            else None

    async def _live_node(self, query: str, key: str) -> NodeInfo | None:
        async with self.db.connection() as conn:
            params: dict[str, str] | tuple[str, str] = (
                {"key": key, "me": self.node_id} if "%(key)s" in query else (key, self.node_id)
            )
            cur = await conn.execute(query.encode(), params)
            row = await cur.fetchone()
        return NodeInfo(row["node_id"], row["advertise"], row["heartbeat_at"], True) if row else None

    async def owner(self, server_call_id: str) -> str | None:
        """The node that owns the call now (None when no node does)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT node_id FROM call_owners WHERE server_call_id = %s", (server_call_id,))
            row = await cur.fetchone()
        return str(row["node_id"]) if row else None
