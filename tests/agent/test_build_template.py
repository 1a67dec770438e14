"""Recipe builder (app/hostagent/build_template.py): recipe parsing, ids, cache key, clear failures."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from app.hostagent import build_template

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "templates" / "code-runner" / "recipe.json"


def test_code_runner_recipe_and_migration_agree() -> None:
    recipe = build_template.load_recipe(RECIPE)
    assert recipe.name == "code-runner-beta" and recipe.default_user == "wrenn-user"
    assert recipe.template_id == str(uuid.uuid5(uuid.NAMESPACE_URL, "wrenn:template:code-runner-beta"))
    migration = (ROOT / "migrations" / "versions" / "0002_code_runner_template.py").read_text()
    assert f'CODE_RUNNER_ID = "{recipe.template_id}"' in migration
    assert recipe.start is not None and recipe.start.ready_port == 8888 and recipe.start.user == "wrenn-user"
    assert "--port=8888" in recipe.start.cmd
    config = recipe.files["/etc/jupyter/jupyter_server_config.py"][1]
    assert "disable_check_xsrf = True" in config and 'IdentityProvider.token = ""' in config
    assert any("ipykernel install" in s.run and "--name wrenn" in s.run for s in recipe.steps)
    pins = " ".join(s.run for s in recipe.steps)
    for pkg in ("jupyter_server==", "ipykernel==", "numpy==", "pandas==", "matplotlib==", "seaborn==", "requests=="):
        assert pkg in pins


def test_recipe_hash_covers_the_recipe(tmp_path: Path) -> None:
    raw = json.loads(RECIPE.read_text())
    a = build_template.load_recipe(RECIPE)
    raw["steps"][0]["run"] += " && true"
    changed = tmp_path / "recipe.json"
    changed.write_text(json.dumps(raw))
    b = build_template.load_recipe(changed)
    assert build_template.recipe_hash(a) == build_template.recipe_hash(build_template.load_recipe(RECIPE))
    assert build_template.recipe_hash(a) != build_template.recipe_hash(b)
    assert build_template.cached_build(tmp_path, a) is None


@pytest.mark.parametrize("bad", [{"steps": []}, {"name": "x", "base": "ubuntu"},
                                 {"name": "x", "start": {"cmd": ""}}, {"name": "x", "files": {"rel": {"content": ""}}}])
def test_invalid_recipes_are_rejected(tmp_path: Path, bad: dict[str, object]) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        build_template.load_recipe(path)


@pytest.mark.timeout(180)
def test_failing_step_is_reported_and_leaves_no_template(minimal_rootfs: Path) -> None:
    path = Path("/var/tmp") / f"wrenn-broken-recipe-{uuid.uuid4().hex[:8]}.json"
    name = f"broken-test-{uuid.uuid4().hex[:8]}"
    path.write_text(json.dumps({"name": name, "steps": [
        {"name": "fine", "run": "echo ok"},
        {"name": "explodes", "run": "echo about-to-fail; echo details >&2; exit 3"},
    ]}))
    tdir = minimal_rootfs.parents[2]  # <templates_dir>/minimal/<hash>/rootfs
    try:
        with pytest.raises(build_template.BuildError, match=r"(?s)explodes.*exit 3.*about-to-fail.*details"):
            build_template.ensure_template(path, tdir)
        assert not (tdir / build_template.ZERO_UUID / build_template.template_id_for(name)).exists()
        assert build_template.main([str(path), "--templates-dir", str(tdir)]) == 1
    finally:
        path.unlink()
