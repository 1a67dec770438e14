"""The CP's side of host-agent RPC: its client certificate and one cached client per host."""

from __future__ import annotations

import uuid

from app.core import ids
from app.core.state import AppState
from app.hostagent.client import AgentClient, AgentPool
from app.hostagent.tls import CertificateAuthority, ClientCertHolder, load_ca

KEY = "agents"


async def start(state: AppState) -> None:
    ca = load_ca(state.settings.ca_cert, state.settings.ca_key)
    state.extras["ca"] = ca
    state.extras[KEY] = AgentPool(ClientCertHolder(ca))


async def stop(state: AppState) -> None:
    pool: AgentPool | None = state.extras.pop(KEY, None)
    if pool is not None:
        await pool.aclose()


def ca_of(state: AppState) -> CertificateAuthority:
    ca: CertificateAuthority = state.extras["ca"]
    return ca


def client_for(state: AppState, host_id: uuid.UUID, address: str) -> AgentClient:
    pool: AgentPool = state.extras[KEY]
    return pool.get(ids.encode(ids.HOST, host_id), address)


async def forget(state: AppState, host_id: uuid.UUID) -> None:
    pool: AgentPool | None = state.extras.get(KEY)
    if pool is not None:
        await pool.drop(ids.encode(ids.HOST, host_id))
