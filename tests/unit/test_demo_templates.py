"""The demo runs from an installed package: its templates are package data, found with
importlib.resources, and its work folder is written from them alone (never from the
repository's ``nodes/``); the wheel ships them and no test code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from coalition.demo.nodes import NODE_OVERRIDES, TEMPLATES, templates
from coalition.node.config import load_config
from coalition.node.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "nodes"
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]


def template_files() -> list[str]:
    """Every template the demo reads, relative to the templates folder."""
    with templates() as folder:
        manifest = Manifest.load(folder / "coalition.toml")
        configs = [p.config for p in manifest.partners]
        assert all(c is not None for c in configs)
        return ["coalition.toml", *(str(c.relative_to(folder)) for c in configs if c)]


def test_importlib_resources_finds_every_template() -> None:
    names = template_files()
    assert names == [
        "coalition.toml",
        "skyair/node.toml",
        "staybright/node.toml",
        "beanhouse/node.toml",
    ]
    root = files("coalition.demo").joinpath(TEMPLATES)
    for name in names:
        assert tomllib.loads(root.joinpath(name).read_text(encoding="utf-8"))


def test_the_templates_are_the_repository_nodes() -> None:
    """``nodes/`` is the coalition people run by hand and in docker compose; the demo
    ships a copy. Copy ``nodes/`` over ``src/coalition/demo/templates`` after changing it."""
    root = files("coalition.demo").joinpath(TEMPLATES)
    for name in template_files():
        assert root.joinpath(name).read_bytes() == (NODES / name).read_bytes(), name


_PREPARE = """
import json, sys
from pathlib import Path
nodes = Path(sys.argv[1]).resolve()
read = []
def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = Path(args[0] if isinstance(args[0], str) else args[0].decode())
        if path.resolve().is_relative_to(nodes):
            read.append(str(path))
sys.addaudithook(audit)
from coalition.demo.nodes import prepare_coalition
manifest = prepare_coalition(Path("work"))
print(json.dumps({"manifest": str(manifest.resolve()), "read": read}))
"""


def test_the_work_folder_is_built_from_the_templates_alone(tmp_path: Path) -> None:
    """In another folder, with an audit hook recording every file opened under the
    repository's nodes/: none is, and the work folder holds each brand's template with
    the demo's overrides and free ports."""
    result = subprocess.run(
        [sys.executable, "-c", _PREPARE, str(NODES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reported = json.loads(result.stdout)
    assert reported["read"] == []
    manifest = Manifest.load(Path(reported["manifest"]))
    assert manifest.path.parent == tmp_path / "work"
    with templates() as folder:
        source = Manifest.load(folder / "coalition.toml")
        assert manifest.programs == source.programs
        assert manifest.credit_limits == source.credit_limits
        assert manifest.witness_quorum == source.witness_quorum
        for partner in manifest.partners:
            template = tomllib.loads((folder / partner.program / "node.toml").read_text())
            assert partner.config == tmp_path / "work" / partner.program / "node.toml"
            written = tomllib.loads(partner.config.read_text())
            addresses = {"grpc": partner.grpc, "http": partner.http}
            assert written["node"] == template["node"] | NODE_OVERRIDES["node"] | addresses
            for table in ("sealer", "rules"):
                assert written[table] == template[table] | NODE_OVERRIDES[table]
            assert written["program"] == template["program"]
            config = load_config(partner.config)
            assert (config.grpc_address, config.http_address) == (partner.grpc, partner.http)
            assert config.coalition is not None
            assert config.coalition.partner_grpc_address == partner.partner_grpc
            assert config.coalition.manifest_path.resolve() == manifest.path.resolve()
    ports = [a for p in manifest.partners for a in (p.grpc, p.partner_grpc, p.http)]
    assert len(set(ports)) == len(ports)


@pytest.mark.slow
def test_the_wheel_ships_the_templates_and_no_test_code(tmp_path: Path) -> None:
    """Built from a copy of the project's tracked files (the build writes beside them)."""
    project = tmp_path / "project"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path / "dist"), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("coalition-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in template_files():
        assert f"coalition/demo/templates/{name}" in names
    assert "coalition/demo/processes.py" in names
    test_code = [n for n in names if not n.startswith(("coalition/", "coalition-"))]
    assert test_code == []
    assert not [n for n in names if "testing" in n or n.startswith("coalition/support")]
