"""``wrenn-agent``: the host agent command line, a programmatic entry, and a spawner for embedded mode.

Usage::

    wrenn-agent --cp-url URL --register TOKEN --address IP:PORT [--listen HOST:PORT] [--data-dir DIR]
    wrenn-agent --cp-url URL [--listen HOST:PORT] [--data-dir DIR]      # resume with saved credentials

Settings (flag > environment > default):

=====================  ===========================  =====================================================
flag                   environment                  default
=====================  ===========================  =====================================================
``--cp-url``           ``WRENN_CP_URL``             required
``--register``         ``WRENN_REGISTER_TOKEN``     none: load ``<data-dir>/host-credentials.json``
``--address``          ``WRENN_HOST_ADDRESS``       required with ``--register`` (sent to the CP; cert SAN)
``--listen``           ``WRENN_HOST_LISTEN_ADDR``   ``:<port of --address>``, else ``:50051``
``--data-dir``         ``WRENN_DIR``                ``/var/lib/wrenn`` for root, else the user data dir
``--runtime-dir``                                   ``<data-dir>`` (capsules in ``<dir>/capsules``; needs o+x)
``--log-level``        ``LOG_LEVEL``                ``info``
..                     ``WRENN_HEARTBEAT_INTERVAL`` 30 (seconds; tests use less)
..                     ``WRENN_AGENT_PARENT_PID``   stop when that process is no longer the parent
=====================  ===========================  =====================================================

Signals: SIGTERM / SIGINT stop the agent gracefully (capsules are destroyed, credentials kept);
SIGHUP refreshes the credentials and the server certificate at once.

Exit codes: 0 after a stop, ``Terminate`` or host deletion; 1 when registration, credentials, TLS or the
listener fail; 2 for usage errors (including "no credentials, use --register").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import platformdirs

from app.hostagent.agent_core import (
    DEFAULT_PORT,
    HEARTBEAT_INTERVAL,
    AgentOptions,
    AgentStartError,
    HostAgent,
    RuntimeFactory,
    StopReason,
    address_port,
)

__all__ = ["AgentStartError", "HostAgent", "main", "run_agent", "spawn_local_agent", "local_agent_command"]

log = logging.getLogger("wrenn.agent")


def default_data_dir() -> Path:
    """``WRENN_DIR``; else ``/var/lib/wrenn`` for root (capsule uids must traverse it; /root is 0700);
    else the user data dir."""
    if os.environ.get("WRENN_DIR"):
        return Path(os.environ["WRENN_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/wrenn")
    return Path(platformdirs.user_data_dir("wrenn"))


def default_listen(address: str) -> str:
    if os.environ.get("WRENN_HOST_LISTEN_ADDR"):
        return os.environ["WRENN_HOST_LISTEN_ADDR"]
    return f":{address_port(address) or DEFAULT_PORT}"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise AgentStartError(f"{name} must be a number of seconds, got {raw!r}", 2) from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wrenn-agent", description="Wrenn host agent (capsules on bubblewrap).")
    p.add_argument("--cp-url", default=os.environ.get("WRENN_CP_URL", ""), help="control plane URL (WRENN_CP_URL)")
    p.add_argument("--register", metavar="TOKEN", default=os.environ.get("WRENN_REGISTER_TOKEN") or None,
                   help="one-time registration token; always re-registers when given")
    p.add_argument("--address", metavar="HOST:PORT", default=os.environ.get("WRENN_HOST_ADDRESS", ""),
                   help="address the control plane uses to reach this agent (required with --register)")
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help="listen address (WRENN_HOST_LISTEN_ADDR; default :<port of --address> or :50051)")
    p.add_argument("--data-dir", type=Path, default=None, help="state directory (WRENN_DIR)")
    p.add_argument("--runtime-dir", type=Path, default=None,
                   help="capsule runtime state (default <data-dir>; capsules go to <dir>/capsules)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"), help="log level (LOG_LEVEL)")
    return p


def options_from_args(argv: list[str]) -> tuple[AgentOptions, str]:
    """Parse the command line; returns the options and the log level. ``SystemExit`` on bad usage."""
    args = _parser().parse_args(argv)
    if not args.cp_url:
        raise AgentStartError("--cp-url (or WRENN_CP_URL) is required", 2)
    parent = os.environ.get("WRENN_AGENT_PARENT_PID", "")
    opts = AgentOptions(
        cp_url=args.cp_url,
        data_dir=(args.data_dir or default_data_dir()).resolve(),
        address=args.address,
        register_token=args.register,
        listen=args.listen or default_listen(args.address),
        heartbeat_interval=_env_float("WRENN_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL),
        runtime_dir=args.runtime_dir.resolve() if args.runtime_dir else None,
        parent_pid=int(parent) if parent.isdigit() else None,
    )
    return opts, args.log_level


def _prepare_data_dir(data_dir: Path) -> None:
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o711)  # o+x only: capsule uids traverse it, nobody lists it


async def _run_with_signals(opts: AgentOptions) -> int:
    agent = HostAgent(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop, StopReason.SIGNAL)
    loop.add_signal_handler(signal.SIGHUP, agent.request_refresh)
    return await agent.run()


def main(argv: list[str] | None = None) -> int:
    """``wrenn-agent``; returns the exit code."""
    try:
        opts, level = options_from_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help or bad usage
        return exc.code if isinstance(exc.code, int) else 2
    except AgentStartError as exc:
        print(f"wrenn-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat otherwise
    try:
        _prepare_data_dir(opts.data_dir)
        return asyncio.run(_run_with_signals(opts))
    except AgentStartError as exc:
        print(f"wrenn-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"wrenn-agent: {exc}", file=sys.stderr)
        return 1


async def run_agent(
    cp_url: str,
    address: str,
    data_dir: Path | str,
    register_token: str | None = None,
    listen: str | None = None,
    stop_event: asyncio.Event | None = None,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    runtime_dir: Path | None = None,
    runtime_factory: RuntimeFactory | None = None,
) -> int:
    """Run an agent in the current event loop until ``stop_event`` is set (or Terminate / host deletion).

    Returns the exit code; raises ``AgentStartError`` when it cannot start. No signal handlers are
    installed: the caller owns the process.
    """
    opts = _programmatic_options(cp_url, address, data_dir, register_token, listen, heartbeat_interval, runtime_dir)
    _prepare_data_dir(opts.data_dir)
    return await HostAgent(opts, runtime_factory).run(stop_event)


def _programmatic_options(
    cp_url: str, address: str, data_dir: Path | str, register_token: str | None, listen: str | None,
    heartbeat_interval: float, runtime_dir: Path | None,
) -> AgentOptions:
    return AgentOptions(
        cp_url=cp_url, data_dir=Path(data_dir).resolve(), address=address, register_token=register_token,
        listen=listen or f":{address_port(address) or DEFAULT_PORT}", heartbeat_interval=heartbeat_interval,
        runtime_dir=runtime_dir,
    )


def local_agent_command(cp_url: str, data_dir: Path | str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line of a local agent (``python -m app.hostagent.agent``; no console script needed)."""
    return [
        sys.executable, "-m", "app.hostagent.agent",
        "--cp-url", cp_url, "--address", f"{host}:{port}", "--listen", f"{host}:{port}",
        "--data-dir", str(data_dir),
    ]


def spawn_local_agent(
    cp_url: str,
    token: str | None,
    data_dir: Path | str,
    port: int,
    *,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``wrenn-agent`` as a child process of the CP (embedded mode).

    ``token``: a registration token (registers and saves credentials under ``data_dir``), or ``None``
    to resume with the credentials already there. The token travels in the environment, not on the
    command line (other users can read command lines). The child stops by itself, destroying its
    capsules, when this process exits (``WRENN_AGENT_PARENT_PID``); stop it earlier with
    ``proc.terminate()`` then ``proc.wait()``. ``data_dir`` should be traversable (o+x) by other users
    when capsules will run (the data dir of a root CP under /root is not).
    """
    child_env = {k: v for k, v in os.environ.items() if k not in ("WRENN_REGISTER_TOKEN", "WRENN_HOST_LISTEN_ADDR")}
    child_env.update(env or {})
    child_env["WRENN_AGENT_PARENT_PID"] = str(os.getpid())
    if token:
        child_env["WRENN_REGISTER_TOKEN"] = token
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(local_agent_command(cp_url, data_dir, port, host), env=child_env,
                            stdout=stdout, stderr=stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
