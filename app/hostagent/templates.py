"""Builder for the `minimal` capsule template rootfs (Debian bookworm via debootstrap).

Why debootstrap rather than a read-only view of the host's /usr: capsules run in a user namespace
whose root is an unprivileged host uid (``SUBID_BASE``). Host files owned by real root would show
up as ``nobody`` inside, which breaks ``sudo`` (it insists on a root-owned setuid binary and
sudoers file). A debootstrapped tree that we own can be chowned into the capsule uid range once,
so ``sudo`` works inside while root-in-capsule stays powerless on the host. It also decouples the
capsule's software (git, python3, apt) from whatever the host happens to have. The cost is a
one-time build (a few minutes, cached).

Cache: ``$WRENN_TEMPLATES_DIR``, else ``/var/cache/wrenn/templates`` for root (``~/.cache`` is
under the 0700 ``/root``, which the unprivileged capsule uid cannot traverse), else
``~/.cache/wrenn/templates``. The minimal rootfs lives in ``minimal/<recipe-hash>/rootfs`` where
the hash covers the package list, the suite, the mirror and the post-install script. A fresh
clone on the same machine reuses it; changing the recipe builds a new one. ``build.json`` next
to ``rootfs`` records the build time.

CLI: ``python -m app.hostagent.templates [--templates-dir DIR]`` builds (or reuses) and prints the
rootfs path.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

# Capsule uid/gid 0..65535 map to SUBID_BASE..SUBID_BASE+65535 on the host. Far away from the
# usual /etc/subuid ranges (100000+) so capsule ids never coincide with real host users.
SUBID_BASE = 1_000_000_000
SUBID_COUNT = 65536

SUITE = "bookworm"
PACKAGES = [
    "bash",
    "coreutils",
    "git",
    "python3",
    "sudo",
    "procps",
    "ca-certificates",
    "curl",
    "iproute2",
    "less",
    "util-linux",
    "findutils",
    "grep",
    "sed",
    "tar",
    "gzip",
    "xz-utils",
]
USER_NAME = "wrenn-user"
USER_UID = 1000

# Runs inside the new rootfs (chroot) after debootstrap.
POST_INSTALL = f"""set -e
groupadd -g {USER_UID} {USER_NAME}
useradd -m -u {USER_UID} -g {USER_UID} -s /bin/bash {USER_NAME}
echo '{USER_NAME} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER_NAME}
chmod 0440 /etc/sudoers.d/{USER_NAME}
echo 'Defaults !fqdn' > /etc/sudoers.d/00-wrenn
chmod 0440 /etc/sudoers.d/00-wrenn
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
echo wrenn > /etc/hostname
mkdir -p /home/{USER_NAME} && chown {USER_UID}:{USER_UID} /home/{USER_NAME}
"""
RECIPE_VERSION = "1"


def default_templates_dir() -> Path:
    """Root uses /var/cache (the capsule uid must traverse the path; /root is 0700)."""
    env = os.environ.get("WRENN_TEMPLATES_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/wrenn/templates")
    return Path.home() / ".cache" / "wrenn" / "templates"


def debian_mirror() -> str:
    """The Debian mirror configured for apt on this machine (deb822 or one-line format)."""
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def recipe_hash(mirror: str) -> str:
    recipe = json.dumps(
        {
            "v": RECIPE_VERSION,
            "suite": SUITE,
            "packages": PACKAGES,
            "post": POST_INSTALL,
            "mirror": mirror,
            "subid": SUBID_BASE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def shift_ownership(root: Path, base: int = SUBID_BASE) -> None:
    """chown every entry by +base so it maps to the same ids inside the capsule's user namespace.

    chown clears setuid/setgid bits, so the mode is restored afterwards (sudo needs its setuid bit).
    """

    def shift(path: str) -> None:
        st = os.lstat(path)
        if st.st_uid >= base:
            return
        os.lchown(path, st.st_uid + base, st.st_gid + base)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))

    shift(str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            shift(os.path.join(dirpath, name))


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-4000:]}")


def _build(dest: Path, mirror: str) -> None:
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is missing: run scripts/install-system-deps.sh")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(dest), mirror])
    _run(["chroot", str(dest), "/bin/sh", "-c", POST_INSTALL])
    for mnt in ("proc", "dev", "sys", "tmp", "run"):
        (dest / mnt).mkdir(exist_ok=True)
    shift_ownership(dest)


def ensure_minimal_template(templates_dir: Path | None = None) -> Path:
    """Return the cached minimal rootfs, building it first if the recipe changed (or never built)."""
    base = (templates_dir or default_templates_dir()) / "minimal"
    mirror = debian_mirror()
    home = base / recipe_hash(mirror)
    rootfs = home / "rootfs"
    if (home / "build.json").exists():
        return rootfs
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait and reuse
        if (home / "build.json").exists():
            return rootfs
        tmp = base / f".build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        _build(tmp / "rootfs", mirror)
        elapsed = time.monotonic() - started
        info = {
            "build_seconds": round(elapsed, 1),
            "built_at": int(time.time()),
            "mirror": mirror,
            "suite": SUITE,
            "packages": PACKAGES,
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(home, ignore_errors=True)
        tmp.rename(home)
    return rootfs


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or reuse) the minimal capsule template")
    parser.add_argument("--templates-dir", type=Path, default=None)
    args = parser.parse_args()
    rootfs = ensure_minimal_template(args.templates_dir)
    print(rootfs)
    print((rootfs.parent / "build.json").read_text())


if __name__ == "__main__":
    main()
