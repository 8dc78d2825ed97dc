"""`colrag models install` against a local Hub stand-in (tests/hub_server.py): no internet needed.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when it is imported, so every install
runs in a subprocess (`python -m colrag`) with its own HF_HOME and COLRAG_HOME.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from colrag.errors import ColragError, InputError
from colrag.hub import verify_snapshot
from colrag.install import (
    GENERATOR,
    MIN_FREE_ENV,
    MIN_RAM_ENV,
    RETRIEVER,
    check_resources,
    install,
)
from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
EXTRA_FILES = {
    "README.md": b"# a model card\n",
    "pytorch_model.bin": b"\0" * 4096,
    ".gitattributes": b"*.bin filter=lfs\n",
}


def _env(tmp: Path, hub_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COLRAG_", "HUGGING_FACE", "TRANSFORMERS_"))}
    env.update(
        {
            "HF_HOME": str(tmp / "hf"),
            "COLRAG_HOME": str(tmp / "home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            # the real models need ~28 GB of disk and 14 GB of RAM; the tiny ones do not
            MIN_FREE_ENV: "0",
            MIN_RAM_ENV: "0",
            "PYTHONPATH": str(ROOT),
        }
    )
    if hub_url:
        env["HF_ENDPOINT"] = hub_url
    env.update(extra)
    return env


def _colrag(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "colrag", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _repo_files(folder: Path) -> dict[str, bytes]:
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return {**files, **EXTRA_FILES}


@pytest.fixture(scope="module")
def hub_install(tiny_colqwen2_checkpoint, tmp_path_factory):
    """One install of the retriever from the local hub; the first download of the weights is cut short."""
    tmp = tmp_path_factory.mktemp("install")
    hub = HubServer({RETRIEVER.repo_id: _repo_files(tiny_colqwen2_checkpoint)}).start()
    # the connection drops after 25 MB of the 40 MB weights (huggingface_hub reads 10 MB chunks): it resumes
    hub.drop_after["model.safetensors"] = 25_000_000
    env = _env(tmp, hub.url)
    proc = _colrag(env, "models", "install", "--only", "retriever")
    yield tmp, hub, env, proc
    hub.stop()


def test_install_downloads_exports_and_records_source(hub_install):
    tmp, hub, _env, proc = hub_install
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp / "home" / "models" / "retriever"
    assert (bundle / "manifest.json").is_file()
    manifest = json.loads((bundle / "manifest.json").read_text())
    repo = hub.repos[RETRIEVER.repo_id]
    assert manifest["kind"] == "retriever"
    assert manifest["source"] == RETRIEVER.repo_id
    assert manifest["revision"] == repo.sha  # the commit the branch resolved to, not "main"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    line = proc.stdout.strip().splitlines()[-1].split("\t")
    assert line[:3] == ["installed", "retriever", str(bundle)]
    # only what the exporter needs was fetched; the dropped download was resumed with a Range request
    got = hub.downloaded(RETRIEVER.repo_id)
    assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
    assert not got & set(EXTRA_FILES)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] in ("bytes=10485760-", "bytes=20971520-"), ranges


def test_installed_bundle_verifies_and_lists(hub_install):
    _tmp, _hub, env, proc = hub_install
    assert proc.returncode == 0, proc.stderr[-3000:]
    verify = _colrag(env, "models", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("ok\t")
    listing = _colrag(env, "models", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [(r["kind"], r["source"], r["ok"]) for r in rows] == [("retriever", RETRIEVER.repo_id, True)]


def test_second_install_keeps_the_bundle_without_network(hub_install):
    _tmp, hub, env, proc = hub_install
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = len(hub.requests)
    again = _colrag(env, "models", "install", "--only", "retriever", "--json")
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in json.loads(again.stdout)] == ["kept"]
    assert "--reinstall" in again.stderr
    assert len(hub.requests) == before


def test_offline_install_uses_the_cache(hub_install, tmp_path):
    _tmp, hub, env, proc = hub_install
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = len(hub.requests)
    offline = dict(env, HF_HUB_OFFLINE="1", COLRAG_HOME=str(tmp_path / "home"))
    run = _colrag(offline, "models", "install", "--only", "retriever")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "home" / "models" / "retriever" / "manifest.json").is_file()
    assert len(hub.requests) == before


def test_offline_with_empty_cache_is_one_clear_line(tmp_path):
    run = _colrag(_env(tmp_path, HF_HUB_OFFLINE="1"), "models", "install", "--only", "retriever")
    assert run.returncode == 1
    errors = _error_lines(run.stderr)
    assert len(errors) == 1, run.stderr
    assert "offline" in errors[0] and RETRIEVER.repo_id in errors[0]
    # both ways round it are named, and what "offline" means
    assert "--retriever-from DIR --generator-from DIR" in errors[0] and "HF_HUB_OFFLINE is set" in errors[0]
    assert "only the Hugging Face cache" in errors[0] and "config.json" in errors[0]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "home" / "models" / "retriever").exists()


def test_unreachable_hub_is_one_clear_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = _colrag(_env(tmp_path, f"http://127.0.0.1:{port}"), "models", "install", "--only", "retriever")
    assert run.returncode == 1
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and "cannot reach the Hugging Face Hub" in errors[0], run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_repo_revision_is_one_clear_line(tmp_path):
    with HubServer({"someone/else": {"config.json": b"{}"}}) as hub:
        run = _colrag(_env(tmp_path, hub.url), "models", "install", "--only", "retriever")
    assert run.returncode == 1
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and "not found on the Hub" in errors[0], run.stderr


def test_insufficient_disk_is_refused_before_downloading(tmp_path):
    with HubServer({RETRIEVER.repo_id: {"config.json": b"{}"}}) as hub:
        env = _env(tmp_path, hub.url, COLRAG_INSTALL_MIN_FREE_BYTES=str(10**18))
        run = _colrag(env, "models", "install", "--only", "retriever")
        assert hub.requests == []
    assert run.returncode == 1
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and "not enough free disk" in errors[0] and "--force" in errors[0], run.stderr


def test_retriever_from_a_folder_and_generator_from_the_hub(
    tiny_colqwen2_checkpoint, tiny_qwen2vl_shared_checkpoint, tmp_path
):
    """Both parts: the retriever from a local checkpoint, the generator downloaded; its vision tower is shared."""
    with HubServer({GENERATOR.repo_id: _repo_files(tiny_qwen2vl_shared_checkpoint)}) as hub:
        env = _env(tmp_path, hub.url)
        run = _colrag(env, "models", "install", "--retriever-from", str(tiny_colqwen2_checkpoint), "--json")
        assert run.returncode == 0, run.stderr[-3000:]
        assert hub.downloaded(RETRIEVER.repo_id) == set()
        assert "model.safetensors" in hub.downloaded(GENERATOR.repo_id)
    rows = {r["part"]: r for r in json.loads(run.stdout)}
    assert rows["retriever"]["status"] == rows["generator"]["status"] == "installed"
    assert rows["generator"]["source"] == GENERATOR.repo_id
    gen = json.loads((tmp_path / "home" / "models" / "generator" / "manifest.json").read_text())
    assert gen["shared_vision"]["bundle"] == "../retriever"
    verify = _colrag(env, "models", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_from_folder_that_is_not_a_checkpoint(tmp_path):
    run = _colrag(_env(tmp_path), "models", "install", "--only", "retriever", "--retriever-from", str(tmp_path))
    assert run.returncode == 2
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and "not a checkpoint folder" in errors[0], run.stderr


# -- library units ---------------------------------------------------------------------------


def test_check_resources_refuses_small_disk_and_memory(tmp_path, monkeypatch):
    monkeypatch.delenv(MIN_FREE_ENV, raising=False)
    monkeypatch.delenv(MIN_RAM_ENV, raising=False)
    specs = [RETRIEVER, GENERATOR]
    plenty = check_resources(
        specs, specs, tmp_path / "models", tmp_path / "cache", free=lambda p: 10**13, memory=lambda: 64 * 10**9
    )
    assert plenty.problems == []
    small = check_resources(
        specs, specs, tmp_path / "models", tmp_path / "cache", free=lambda p: 10**9, memory=lambda: 8 * 10**9
    )
    assert any("not enough free disk" in p for p in small.problems)
    assert any("not enough memory" in p for p in small.problems)
    # models dir and cache on one filesystem: their needs add up
    need = sum(s.bundle_bytes + s.download_bytes for s in specs)
    tight = check_resources(
        specs, specs, tmp_path / "models", tmp_path / "cache", free=lambda p: need, memory=lambda: 64 * 10**9
    )
    assert tight.problems and "on the filesystem of" in tight.problems[0]


def test_check_resources_counts_cached_downloads(tmp_path, monkeypatch):
    monkeypatch.delenv(MIN_FREE_ENV, raising=False)
    blobs = tmp_path / "cache" / "models--vidore--colqwen2-v1.0-hf" / "blobs"
    blobs.mkdir(parents=True)
    with open(blobs / "x", "wb") as f:
        f.truncate(RETRIEVER.download_bytes)  # sparse: the whole download is already cached
    free = int(RETRIEVER.bundle_bytes * 1.1) + 10**6
    ok = check_resources(
        [RETRIEVER], [RETRIEVER], tmp_path / "models", tmp_path / "cache", free=lambda p: free, memory=lambda: None
    )
    assert ok.problems == [] and ok.warnings  # memory unknown: a warning, not a refusal


def test_verify_snapshot_removes_a_corrupt_blob(tmp_path):
    good, bad = b"good weights", b"bad weights"
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for name, data, claimed in (("a.safetensors", good, good), ("b.safetensors", bad, good + b"!")):
        blob = blobs / hashlib.sha256(claimed).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(blob)
    (snap / "config.json").write_text("{}")  # a small git file: not hashed
    with pytest.raises(ColragError, match=r"b\.safetensors was downloaded corrupt"):
        verify_snapshot(snap)
    assert not (snap / "b.safetensors").exists()
    assert verify_snapshot(snap) == 1


def test_install_keeps_a_healthy_bundle(tiny_retriever_bundle, tmp_path):
    import shutil

    shutil.copytree(tiny_retriever_bundle, tmp_path / "retriever")
    [result] = install(tmp_path, only="retriever")
    assert result.status == "kept" and result.bundle == tmp_path / "retriever"


def test_install_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="unknown quantization"):
        install(tmp_path, quantize="int3")
    with pytest.raises(InputError, match="--generator-from was given with --only retriever"):
        install(tmp_path, only="retriever", generator_from=tmp_path)
