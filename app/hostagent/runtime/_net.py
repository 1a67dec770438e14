"""Per-capsule networking: a veth pair into the capsule's network namespace, /30 from a pool, NAT out.

Pool: 10.200.0.0/16 cut into /30s; slot i -> host side 10.200.x.(4i+1), capsule side (4i+2).
The host-side address is what the agent dials for the port proxy.

Host firewall (chains WRENN-IN / WRENN-FWD / WRENN-NAT, rebuilt at start-up):
  * capsules may not open connections to the host itself (INPUT from wr+ only ESTABLISHED);
  * capsules may not reach each other (FORWARD wr+ -> wr+ dropped) nor link-local metadata;
  * everything else is forwarded and MASQUERADEd out of the host's uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import shutil
import subprocess

POOL = ipaddress.ip_network("10.200.0.0/16")
IFPREFIX = "wr"
_RULES: list[tuple[str, str, list[str]]] = [
    ("filter", "WRENN-IN", ["-i", f"{IFPREFIX}+", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                            "-j", "ACCEPT"]),
    ("filter", "WRENN-IN", ["-i", f"{IFPREFIX}+", "-j", "DROP"]),
    ("filter", "WRENN-FWD", ["-i", f"{IFPREFIX}+", "-o", f"{IFPREFIX}+", "-j", "DROP"]),
    ("filter", "WRENN-FWD", ["-i", f"{IFPREFIX}+", "-d", "169.254.0.0/16", "-j", "DROP"]),
    ("filter", "WRENN-FWD", ["-i", f"{IFPREFIX}+", "-j", "ACCEPT"]),
    ("filter", "WRENN-FWD", ["-o", f"{IFPREFIX}+", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                             "-j", "ACCEPT"]),
    ("nat", "WRENN-NAT", ["-s", str(POOL), "!", "-o", f"{IFPREFIX}+", "-j", "MASQUERADE"]),
]
_HOOKS = [("filter", "INPUT", "WRENN-IN"), ("filter", "FORWARD", "WRENN-FWD"),
          ("nat", "POSTROUTING", "WRENN-NAT")]


def slot_addrs(slot: int) -> tuple[str, str]:
    base = int(POOL.network_address) + slot * 4
    return str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))


def max_slots() -> int:
    return POOL.num_addresses // 4


SLOT_LOCK_DIR = "/run/wrenn/net-slots"


class SlotPool:
    """Network slots shared by every agent/runtime on the host: one flock'ed file per slot in use.

    The lock dies with the process, so a crashed agent's slots become free again (and the stale veth
    is deleted by the next owner before reuse).
    """

    def __init__(self) -> None:
        self._held: dict[int, int] = {}
        os.makedirs(SLOT_LOCK_DIR, exist_ok=True)

    def acquire(self) -> int:
        for slot in range(max_slots()):
            if slot in self._held:
                continue
            fd = os.open(f"{SLOT_LOCK_DIR}/{slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[slot] = fd
            return slot
        raise RuntimeError("no free network slot")

    def release(self, slot: int) -> None:
        fd = self._held.pop(slot, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _ipt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def setup_host_firewall() -> str:
    """Idempotently install the NAT + isolation rules. Returns "" or a reason NAT is unavailable."""
    if not shutil.which("iptables"):
        return "iptables not installed (scripts/install-system-deps.sh): no NAT, no host firewall"
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")  # needed for outbound NAT
    except OSError as exc:
        return f"cannot enable ip_forward: {exc}"
    for table, chain in {(t, c) for t, c, _ in _RULES}:
        _ipt("-t", table, "-N", chain)
        _ipt("-t", table, "-F", chain)
    for table, chain, rule in _RULES:
        r = _ipt("-t", table, "-A", chain, *rule)
        if r.returncode != 0:
            return f"iptables: {r.stderr.strip()}"
    for table, hook, chain in _HOOKS:
        if _ipt("-t", table, "-C", hook, "-j", chain).returncode != 0:
            _ipt("-t", table, "-I", hook, "1", "-j", chain)
    return ""


async def _run(cmd: list[str], stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: {err.decode(errors='replace').strip()}")


def host_ifname(slot: int) -> str:
    return f"{IFPREFIX}{slot}"


async def attach(slot: int, pid: int) -> tuple[str, str]:
    """Create the veth pair, move one end into the netns of ``pid`` as eth0, address both ends."""
    host_ip, cap_ip = slot_addrs(slot)
    ifname = host_ifname(slot)
    await delete_link(ifname)  # stale leftover from a crashed agent
    host_batch = (
        f"link add {ifname} type veth peer name eth0 netns {pid}\n"
        f"addr add {host_ip}/30 dev {ifname}\n"
        f"link set {ifname} up\n"
    )
    await _run(["ip", "-batch", "-"], host_batch.encode())
    inner_batch = (
        f"addr add {cap_ip}/30 dev eth0\n"
        "link set eth0 up\n"
        "link set lo up\n"
        f"route add default via {host_ip}\n"
    )
    await _run(["nsenter", "-t", str(pid), "-n", "ip", "-batch", "-"], inner_batch.encode())
    return host_ip, cap_ip


async def delete_link(ifname: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", "link", "del", ifname, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await proc.wait()


def link_exists(ifname: str) -> bool:
    return subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode == 0
