"""``wrenn-cp template build RECIPE_FILE``: submit a recipe to a control plane and follow the build.

Credentials: ``--email``/``--password`` (or ``WRENN_ADMIN_EMAIL``/``WRENN_ADMIN_PASSWORD``), else the local
platform's ``<data-dir>/bootstrap.json``. URL: ``--url`` (or ``WRENN_URL``), else the bootstrap file's, else
``http://127.0.0.1:8080``.

On a terminal: a progress bar per step and the running step's log tail, redrawn live. Otherwise (CI, pipes):
one line per step transition and every log line as it arrives. Exit status 0 when the build succeeds, 1 when
it fails or is cancelled, 2 when the recipe is refused or the platform cannot be reached, 130 on Ctrl-C (the
build is cancelled first).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from app.builds.recipe import RecipeError, load_file
from app.builds.schemas import FINISHED

template_app = typer.Typer(help="Platform templates: build them from recipes.", no_args_is_help=True)
console = Console(stderr=True)
POLL = 0.5
TAIL = 12
NAME_WIDTH = 48
ICONS = {"pending": " ", "running": "…", "success": "✔", "failed": "✘", "cancelled": "⊘", "skipped": "-"}


class CliError(Exception):
    """Refused or unreachable: exit status 2 with the message."""


def _bootstrap(data_dir: Path | None) -> dict[str, Any]:
    from app.core.config import Settings

    root = data_dir.resolve() if data_dir is not None else Settings().data_dir
    path = root / "bootstrap.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _error(r: httpx.Response) -> str:
    try:
        body = r.json()
        return f"{body['error']['code']}: {body['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:300]}"


class Session:
    """A logged-in admin session (cookie + CSRF header) against one control plane."""

    def __init__(self, url: str, email: str, password: str, timeout: float = 30) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        try:
            r = self.http.post("/v1/auth/login", json={"email": email, "password": password})
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {url}: {exc}") from exc
        if r.status_code != 200:
            raise CliError(f"login as {email} failed: {_error(r)}")
        if not r.json().get("is_admin"):
            raise CliError(f"{email} is not a platform admin")
        self.csrf = {"X-CSRF-Token": self.http.cookies.get("wrenn_csrf") or ""}

    def submit(self, recipe: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/v1/admin/builds", json=recipe, headers=self.csrf)
        if r.status_code != 202:
            raise CliError(f"build refused: {_error(r)}")
        return dict(r.json())

    def get(self, build_id: str, *, logs: bool) -> dict[str, Any]:
        r = self.http.get(f"/v1/admin/builds/{build_id}", params={"logs": str(logs).lower(), "tail": TAIL})
        if r.status_code != 200:
            raise CliError(f"reading build {build_id} failed: {_error(r)}")
        return dict(r.json())

    def cancel(self, build_id: str) -> None:
        self.http.post(f"/v1/admin/builds/{build_id}/cancel", headers=self.csrf)

    def close(self) -> None:
        self.http.close()


def _err(message: str) -> None:
    console.print(Text(message, style="red"), soft_wrap=True)


def _summary(build: dict[str, Any]) -> Text:
    if build["status"] == "success":
        return Text.assemble((f"built template {build['name']!r}", "green"), f" (build {build['id']})")
    failed = build.get("failed_step") or {}
    where = f" at step {failed['index']} ({failed['name']})" if failed.get("index") else \
        (f" during {failed.get('name') or failed.get('phase')}" if failed else "")
    return Text.assemble((f"build {build['id']} {build['status']}{where}:", "red"), f" {build.get('error') or ''}")


def _label(step: dict[str, Any]) -> str:
    name = step["name"] if len(step["name"]) <= NAME_WIDTH else step["name"][: NAME_WIDTH - 1] + "…"
    return f"{ICONS.get(step['status'], '?')} {step['step']:>2}. {name:<{NAME_WIDTH}}"


def _follow_live(session: Session, build: dict[str, Any], deadline: float) -> dict[str, Any]:
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
                        TimeElapsedColumn(), console=console)
    tasks = [progress.add_task(_label(s), total=1, start=False) for s in build["steps"]]
    started: set[int] = set()
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            for s, task in zip(build["steps"], tasks, strict=False):
                progress.update(task, description=_label(s))
                if s["status"] != "pending" and task not in started:
                    progress.start_task(task)
                    started.add(task)
                if s["status"] in ("success", "failed", "cancelled", "skipped"):
                    progress.update(task, completed=1)
                    progress.stop_task(task)
            running = next((s for s in build["steps"] if s["status"] == "running"), None)
            shown = running or next((s for s in reversed(build["steps"]) if s["status"] == "failed"), None)
            header = Text(f"build {build['id']} · {build['status']} · {build.get('phase', '')}", style="bold")
            parts: list[Any] = [header, progress]
            if shown is not None and shown.get("log_tail"):
                lines = [line[: console.width - 4] for line in shown["log_tail"]]
                parts.append(Panel(Text("\n".join(lines)), title=f"step {shown['step']} log", expand=True))
            live.update(Group(*parts))
            if build["status"] in FINISHED and build.get("cleaned_up", True):
                return build
            if time.monotonic() > deadline:
                raise CliError(f"gave up waiting for build {build['id']} (still {build['status']})")
            time.sleep(POLL)
            build = session.get(build["id"], logs=False)


def _follow_plain(session: Session, build: dict[str, Any], deadline: float) -> dict[str, Any]:
    seen_status: dict[int, str] = {}
    printed: dict[int, int] = {}
    while True:
        for s, entry in zip(build["steps"], build.get("logs") or [{} for _ in build["steps"]], strict=False):
            n = s["step"]
            if s["status"] not in ("pending", "skipped") and n not in seen_status:
                console.print(Text.assemble((f"step {n}/{build['total_steps']}", "bold"), f" {s['name']}"),
                              soft_wrap=True)
            output = entry.get("output", "")
            end = int(entry.get("truncated", 0)) + len(output)
            done = printed.get(n, 0)
            if end > done:
                chunk = output[max(0, len(output) - (end - done)):]
                for line in chunk.splitlines():
                    console.print(f"  | {line}", highlight=False, markup=False, soft_wrap=True)
                printed[n] = end
            if s["status"] != seen_status.get(n) and s["status"] in ("success", "failed", "cancelled"):
                took = f" in {s['duration_ms'] / 1000:.1f}s" if s.get("duration_ms") is not None else ""
                error = f": {s['error']}" if s.get("error") else ""
                console.print(f"  {ICONS[s['status']]} step {n} {s['status']}{took}{error}", highlight=False,
                              markup=False, soft_wrap=True)
            if s["status"] != "pending":
                seen_status[n] = s["status"]
        if build["status"] in FINISHED and build.get("cleaned_up", True):
            return build
        if time.monotonic() > deadline:
            raise CliError(f"gave up waiting for build {build['id']} (still {build['status']})")
        time.sleep(POLL)
        build = session.get(build["id"], logs=True)


@template_app.command("build")
def build_command(
    recipe_file: Annotated[Path, typer.Argument(help="Recipe (.json, .yaml).", exists=False)],
    url: Annotated[str | None, typer.Option(envvar="WRENN_URL", help="Control plane URL.")] = None,
    email: Annotated[str | None, typer.Option(envvar="WRENN_ADMIN_EMAIL", help="Platform admin email.")] = None,
    password: Annotated[str | None, typer.Option(envvar="WRENN_ADMIN_PASSWORD", help="Admin password.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Local platform (bootstrap.json).")] = None,
    name: Annotated[str | None, typer.Option(help="Build under another template name.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing platform template.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Submit and print the build id; do not wait.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 3 * 3600,
) -> None:
    """Submit RECIPE_FILE as a template build and follow it to the end."""
    try:
        recipe = load_file(recipe_file)
    except RecipeError as exc:
        _err(exc.message)
        raise typer.Exit(2) from exc
    if name:
        recipe["name"] = name
    if overwrite:
        recipe["overwrite"] = True
    boot = _bootstrap(data_dir)
    url = url or boot.get("url") or "http://127.0.0.1:8080"
    email = email or boot.get("admin_email")
    password = password or boot.get("admin_password") or os.environ.get("WRENN_ADMIN_PASSWORD")
    if not email or not password:
        _err("no admin credentials: give --email/--password or --data-dir of a local platform")
        raise typer.Exit(2)
    session: Session | None = None
    build: dict[str, Any] | None = None
    try:
        session = Session(url, email, password)
        build = session.submit(recipe)
        console.print(f"build {build['id']} queued: {build['name']!r} from {build['base_template']!r}, "
                      f"{build['total_steps']} steps", highlight=False, soft_wrap=True)
        if detach:
            print(build["id"])
            return
        deadline = time.monotonic() + timeout
        follow = _follow_live if console.is_terminal else _follow_plain
        build = follow(session, build, deadline)
    except CliError as exc:
        _err(str(exc))
        raise typer.Exit(2) from exc
    except KeyboardInterrupt as exc:
        if session is not None and build is not None:
            console.print(f"cancelling build {build['id']}")
            session.cancel(build["id"])
        raise typer.Exit(130) from exc
    finally:
        if session is not None:
            session.close()
    console.print(_summary(build), soft_wrap=True)
    if build["status"] != "success":
        raise typer.Exit(1)
