"""synth-ai 0.17.4's lease REST client against ``taskapp relay serve`` (issue 16, "Proof").

``TunnelsClient.create_synth_lease`` / ``get_synth_lease`` / ``refresh_synth_worker_token``
/ ``close_synth_lease``, with the relay's admin token as synth-ai's API key and the relay
as its backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.interop._run import run_json
from tests.interop._venvs import python_for
from tests.relay._relay_helpers import ADMIN, RelayProcess, token_file

pytestmark = pytest.mark.interop

LEASE_CLIENT = """
import json, os
from synth_ai.sdk.tunnels import TunnelsClient

client = TunnelsClient(api_key=os.environ["ADMIN"], backend_base=os.environ["RELAY"])
lease = client.create_synth_lease(
    client_instance_id="interop-0.17.4", local_host="127.0.0.1", local_port=9,
    requested_ttl_seconds=600, metadata={"from": "synth-ai 0.17.4"},
)
got = client.get_synth_lease(lease["lease_id"])
refreshed = client.refresh_synth_worker_token(lease["lease_id"])
closed = client.close_synth_lease(lease["lease_id"])
try:
    client.get_synth_lease(lease["lease_id"])
    after = "still there"
except Exception as exc:
    after = type(exc).__name__ + " " + str(exc)[:80]
print(json.dumps({
    "lease_id": lease["lease_id"],
    "public_url": lease["public_url"],
    "agent_url": lease["agent_connect"]["url"],
    "worker_token_changed": refreshed["worker_token"] != lease["worker_token"],
    "refreshed_lease_id": refreshed["lease_id"],
    "got": {k: got.get(k) for k in ("lease_id", "status", "connected", "last_seen_at")},
    "closed": {k: closed.get(k) for k in ("lease_id", "status", "connected")},
    "after": after,
}))
"""


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RelayProcess(token_file(tmp_path_factory.mktemp("relay"))) as relay:
        yield relay.wait_url()


def test_lease_client_0_17_4_create_get_refresh_close(relay_url: str, tmp_path: Path) -> None:
    python = python_for("0.17.4")
    out = run_json(python, LEASE_CLIENT, home=tmp_path, env={"ADMIN": ADMIN, "RELAY": relay_url})
    assert out["public_url"].startswith(relay_url + "/")
    assert out["agent_url"].startswith("ws://127.0.0.1:")
    assert out["got"] == {
        "lease_id": out["lease_id"],
        "status": "pending",  # no agent attached yet
        "connected": False,
        "last_seen_at": None,
    }
    assert out["refreshed_lease_id"] == out["lease_id"]
    assert out["worker_token_changed"] is True
    assert out["closed"]["lease_id"] == out["lease_id"]
    assert out["closed"]["status"] == "closed" and out["closed"]["connected"] is False
    assert "404" in out["after"], out["after"]


def test_lease_create_answers_201(relay_url: str) -> None:
    """The status synth-ai's hosted schema gives (the client only checks 2xx)."""
    response = httpx.post(
        f"{relay_url}/api/v1/synthtunnel/leases",
        json={"client_instance_id": "x", "local_target": {"host": "127.0.0.1", "port": 9}},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 201, response.text
    lease_id = response.json()["lease_id"]
    closed = httpx.delete(
        f"{relay_url}/api/v1/synthtunnel/leases/{lease_id}",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert closed.status_code == 200
