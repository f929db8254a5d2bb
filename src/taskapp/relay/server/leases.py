"""Leases: the record of one published task app (token hashes only), and the store that
finds them by id, route token and agent-token hash and persists them to ``--state-file``."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p

__all__ = ["AttachedSession", "Lease", "LeaseStore", "iso", "text_field"]

logger = get_logger("taskapp.relay")


def text_field(value: Any, limit: int) -> str:
    """A string field of a peer's JSON, bounded; anything else (nested junk) is ""."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)[:limit]
    return ""


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class AttachedSession(Protocol):
    """What a lease knows of the agent connection attached to it: the part of
    :class:`~taskapp.relay.server.session.AgentSession` that lease-level code uses (a
    protocol, so this module does not import the session module, which imports it)."""

    @property
    def version(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def closing(self) -> bool: ...
    @property
    def max_inflight(self) -> int: ...
    @property
    def streams(self) -> Mapping[int, Any]: ...

    def send_text(self, frame: Mapping[str, Any]) -> None: ...
    def goaway(self, reason: str, retry_after_ms: int = 1000) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...
    def fail_all(self, code: str) -> None: ...


@dataclasses.dataclass
class Lease:
    lease_id: str
    route_token: str
    agent_hash: str = dataclasses.field(repr=False)
    worker_hash: str = dataclasses.field(repr=False)
    expires_at: float
    created_at: float
    admin_name: str = ""
    client_instance_id: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    prev_worker_hash: str = dataclasses.field(default="", repr=False)
    prev_valid_until: float = 0.0
    detached_since: float | None = None
    session: AttachedSession | None = dataclasses.field(default=None, repr=False)
    inflight: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    expiring_sent: bool = False
    #: Wall-clock time of the agent's last frame (or attach); 0.0: never connected.
    last_seen: float = 0.0

    def worker_matches(self, candidate: str | None, now: float) -> bool:
        hashes = [self.worker_hash]
        if self.prev_worker_hash and now < self.prev_valid_until:
            hashes.append(self.prev_worker_hash)
        return p.token_matches(candidate, hashes)

    def persistent(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "route_token": self.route_token,
            "agent_hash": self.agent_hash,
            "worker_hash": self.worker_hash,
            "prev_worker_hash": self.prev_worker_hash,
            "prev_valid_until": self.prev_valid_until,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "admin_name": self.admin_name,
            "client_instance_id": self.client_instance_id,
            "metadata": self.metadata,
        }


class LeaseStore:
    """Leases by id, route token and agent-token hash; optionally persisted (hashes only)."""

    def __init__(self, state_file: Path | None) -> None:
        self.by_id: dict[str, Lease] = {}
        self.by_route: dict[str, Lease] = {}
        self.by_agent: dict[str, Lease] = {}
        self.state_file = state_file

    def add(self, lease: Lease) -> None:
        self.by_id[lease.lease_id] = lease
        self.by_route[lease.route_token] = lease
        self.by_agent[lease.agent_hash] = lease

    def remove(self, lease: Lease) -> None:
        self.by_id.pop(lease.lease_id, None)
        self.by_route.pop(lease.route_token, None)
        self.by_agent.pop(lease.agent_hash, None)

    def load(self) -> int:
        if self.state_file is None or not self.state_file.exists():
            return 0
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            records = data["leases"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable state file %s: %s", self.state_file, exc)
            return 0
        now = time.time()
        count = 0
        for record in records:
            try:
                lease = Lease(
                    lease_id=str(record["lease_id"]),
                    route_token=str(record["route_token"]),
                    agent_hash=str(record["agent_hash"]),
                    worker_hash=str(record["worker_hash"]),
                    prev_worker_hash=str(record.get("prev_worker_hash", "")),
                    prev_valid_until=float(record.get("prev_valid_until", 0.0)),
                    expires_at=float(record["expires_at"]),
                    created_at=float(record.get("created_at", now)),
                    admin_name=str(record.get("admin_name", "")),
                    client_instance_id=str(record.get("client_instance_id", "")),
                    metadata=dict(record.get("metadata") or {}),
                    detached_since=time.monotonic(),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if lease.expires_at > now:
                self.add(lease)
                count += 1
        return count

    def prepare(self) -> None:
        """Make sure the state file can be written, before the relay takes any lease.

        A missing directory is created (mode 0700); anything else that prevents writing
        raises :class:`ConfigurationError` naming the path, so the relay refuses to start
        instead of answering every lease request with an error.
        """
        path = self.state_file
        if path is None:
            return
        blocker = next((d for d in (path.parent, *path.parent.parents) if d.is_file()), None)
        if blocker is not None:
            raise ConfigurationError(
                f"cannot write the relay's --state-file {str(path)!r}: {str(blocker)!r} is a "
                "file, not a directory; pass a path in a writable directory"
            )
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Probe with the temporary file save() writes (the state file itself, which
            # may hold leases to restore, is left alone).
            probe = path.with_name(path.name + ".tmp")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the relay's --state-file {str(path)!r}: "
                f"{exc.strerror or exc}; pass a path in a writable directory"
            ) from None

    def save(self) -> None:
        """Persist the leases (hashes only). A failure is logged, never raised: the relay
        keeps serving from memory; only a restart would lose the leases."""
        if self.state_file is None:
            return
        try:
            self._write()
        except OSError as exc:
            logger.error(
                "cannot write the state file %s (%s); leases are kept in memory only",
                self.state_file,
                exc.strerror or exc,
            )

    def _write(self) -> None:
        assert self.state_file is not None
        payload = {"version": 1, "leases": [lease.persistent() for lease in self.by_id.values()]}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(tmp, self.state_file)
