"""The lease REST client: create, renew, rotate and delete leases on a relay.

>>> client = LeaseClient("https://relay.example.com", admin_token)   # doctest: +SKIP
>>> lease = client.create(local_host="127.0.0.1", local_port=8114)  # doctest: +SKIP
>>> lease.public_url                                                 # doctest: +SKIP
'https://relay.example.com/s/rt_3f...'
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from taskapp.core.errors import (
    TunnelAuthError,
    TunnelError,
    TunnelProtocolError,
    TunnelRateLimitedError,
)
from taskapp.core.health import is_loopback_url
from taskapp.core.secrets import fingerprint, redact, register_secret
from taskapp.relay import protocol as p

__all__ = ["LeaseClient", "LeaseInfo", "LeaseNotFoundError"]


class LeaseNotFoundError(TunnelError):
    """The relay does not know the lease (expired, deleted, or the relay lost its state)."""


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A lease as the relay returned it. Tokens are kept out of ``repr``."""

    lease_id: str
    route_token: str
    public_url: str
    public_base_url: str
    agent_url: str
    agent_token: str = dataclasses.field(repr=False)
    worker_token: str = dataclasses.field(repr=False)
    expires_at: float = 0.0
    ttl_seconds: int = 0
    limits: dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol_versions: tuple[int, ...] = (1,)


def parse_expiry(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("expires_at is not a string")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class LeaseClient:
    """Synchronous client of the relay's lease API (``/api/v1/synthtunnel/leases``)."""

    def __init__(
        self,
        relay_url: str,
        admin_token: str | None,
        *,
        ca_file: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.relay_url = relay_url.rstrip("/")
        self.admin_token = admin_token
        register_secret(admin_token)
        self.timeout = timeout
        self._ca_file = ca_file
        self._client: Any = None

    def _http(self) -> Any:
        if self._client is None:
            from taskapp.core.transport import http_client

            verify: Any = False
            if urllib.parse.urlsplit(self.relay_url).scheme == "https":
                verify = ssl.create_default_context()
                if self._ca_file is not None:
                    verify.load_verify_locations(cafile=str(self._ca_file))
            self._client = http_client(
                timeout=self.timeout,
                verify=verify,
                trust_env=not is_loopback_url(self.relay_url),
                follow_redirects=False,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        import httpx

        credential = token or self.admin_token
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        url = self.relay_url + path
        try:
            response = self._http().request(
                method,
                url,
                headers=headers,
                json=json,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.HTTPError as exc:
            raise TunnelError(
                f"cannot reach the relay at {self.relay_url} ({type(exc).__name__}: "
                f"{redact(str(exc))}); is 'taskapp relay serve' running there, and is the "
                "URL right?",
                backend="relay",
            ) from None
        status = response.status_code
        if status in (401, 403):
            which = f"token {fingerprint(credential)}" if credential else "no token"
            raise TunnelAuthError(
                f"the relay at {self.relay_url} rejected the credentials ({which}, HTTP "
                f"{status}); check the admin token (admin_token_file= or TASKAPP_RELAY_TOKEN)",
                backend="relay",
            )
        if status == 404:
            raise LeaseNotFoundError(
                f"the relay at {self.relay_url} answered 404 for {method} {path.split('?')[0]} "
                "(lease unknown or expired, or the URL does not point at a taskapp relay)",
                backend="relay",
            )
        if status == 429:
            raise TunnelRateLimitedError(
                f"the relay at {self.relay_url} refused: too many leases (HTTP 429); "
                "close unused task apps or raise --max-leases",
                backend="relay",
            )
        if status >= 400:
            raise TunnelProtocolError(
                f"the relay at {self.relay_url} answered HTTP {status} to {method} "
                f"{path}: {redact(response.text[:200])}",
                backend="relay",
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TunnelProtocolError(
                f"the relay at {self.relay_url} answered {method} {path} with something "
                "that is not a JSON object",
                backend="relay",
            )
        return data

    def create(
        self,
        *,
        local_host: str,
        local_port: int,
        ttl_seconds: int = 3600,
        client_instance_id: str = "taskapp",
        metadata: dict[str, Any] | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> LeaseInfo:
        data = self._call(
            "POST",
            p.LEASES_PATH,
            json={
                "client_instance_id": client_instance_id,
                "local_target": {"host": local_host, "port": local_port},
                "requested_ttl_seconds": ttl_seconds,
                "metadata": metadata or {},
                "capabilities": capabilities or {},
            },
        )
        try:
            connect = data["agent_connect"]
            lease = LeaseInfo(
                lease_id=str(data["lease_id"]),
                route_token=str(data["route_token"]),
                public_url=str(data["public_url"]).rstrip("/"),
                public_base_url=str(data.get("public_base_url") or ""),
                agent_url=str(connect["url"]),
                agent_token=str(connect["agent_token"]),
                worker_token=str(data["worker_token"]),
                expires_at=parse_expiry(data["expires_at"]),
                ttl_seconds=int(data.get("ttl_seconds") or ttl_seconds),
                limits=dict(data.get("limits") or {}),
                protocol_versions=tuple(int(v) for v in data.get("protocol_versions") or (1,)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TunnelProtocolError(
                f"the relay at {self.relay_url} returned a lease without {exc}",
                backend="relay",
            ) from None
        register_secret(lease.agent_token)
        register_secret(lease.worker_token)
        return lease

    def get(self, lease_id: str, *, token: str | None = None) -> dict[str, Any]:
        return self._call("GET", f"{p.LEASES_PATH}/{lease_id}", token=token)

    def renew(self, lease_id: str, ttl_seconds: int, *, token: str | None = None) -> float:
        data = self._call(
            "POST",
            f"{p.LEASES_PATH}/{lease_id}/renew",
            token=token,
            json={"requested_ttl_seconds": ttl_seconds},
        )
        try:
            return parse_expiry(data["expires_at"])
        except (KeyError, ValueError) as exc:
            raise TunnelProtocolError(
                f"the relay's renew answer has no valid expires_at ({exc})", backend="relay"
            ) from None

    def rotate_worker_token(self, lease_id: str, *, token: str | None = None) -> str:
        data = self._call("POST", f"{p.LEASES_PATH}/{lease_id}/worker-token", token=token)
        worker = data.get("worker_token")
        if not isinstance(worker, str) or not worker:
            raise TunnelProtocolError(
                "the relay's rotate answer has no worker_token", backend="relay"
            )
        register_secret(worker)
        return worker

    def delete(self, lease_id: str, *, token: str | None = None, timeout: float = 5.0) -> bool:
        """Delete the lease; True when it existed. Bounded by ``timeout``."""
        try:
            self._call("DELETE", f"{p.LEASES_PATH}/{lease_id}", token=token, timeout=timeout)
        except LeaseNotFoundError:
            return False
        return True
