from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from corral.config.settings import FileDiscoveryConfig
from corral.discovery import FileSource, ManifestError, parse_manifest
from corral.pool import WorkerRegistry, WorkerState
from tests.unit.discovery.fake_worker import eventually

ONE = {"workers": [{"url": "http://127.0.0.1:8001", "model": "m", "role": "decode"}]}


def _write(path: Path, content: str | dict | list) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text)
    # Make sure the change is visible even on filesystems with coarse mtimes.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _source(path: Path) -> tuple[WorkerRegistry, FileSource]:
    registry = WorkerRegistry()
    config = FileDiscoveryConfig(path=path, poll_interval_s=0.05)
    return registry, FileSource(registry, config, drain_timeout_s=0)


def _ids(registry: WorkerRegistry) -> set[str]:
    return set(registry.workers_from("file"))


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".json", json.dumps(ONE)),
        (".yaml", "workers:\n  - url: http://127.0.0.1:8001\n    model: m\n"
                  "    role: decode\n"),
        ("", json.dumps(ONE["workers"])),
        (".txt", "- {url: 'http://127.0.0.1:8001', model: m, role: decode}\n"),
    ],
    ids=["json", "yaml", "sniffed-json-list", "sniffed-yaml-list"],
)
def test_manifest_formats_parse_to_the_same_worker(suffix, text):
    (worker,) = parse_manifest(text, suffix=suffix)
    assert worker.id == "127.0.0.1:8001"
    assert worker.models == ("m",)
    assert worker.role.value == "decode"
    assert worker.source == "file"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"workers": [', "invalid JSON"),
        ('{"workers": [{"url": "http://h:1", "colour": "red"}]}', "colour"),
        ('{"workers": [{"url": "ftp://h:1"}]}', "scheme must be http"),
        ('{"workers": [{"url": "http://h:1", "role": "boss"}]}', "role"),
        ('{"workers": [{"url": "http://h:1"}, {"url": "h:1"}]}', "listed twice"),
        ('{"nodes": []}', "unknown top-level keys"),
        ('{"workers": {"url": "http://h:1"}}', "must be a list"),
        ('["http://h:1"]', "must be a mapping"),
    ],
    ids=["syntax", "unknown-field", "bad-url", "bad-role", "duplicate", "top-key",
         "not-a-list", "entry-not-mapping"],
)
def test_invalid_manifests_are_refused_with_a_reason(text, problem):
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(text, suffix=".json")


async def test_file_source_adds_changes_and_removes_workers(tmp_path):
    path = tmp_path / "workers.json"
    _write(path, ONE)
    registry, source = _source(path)
    assert source.poll()
    assert _ids(registry) == {"127.0.0.1:8001"}

    changed = {"workers": [
        {"url": "http://127.0.0.1:8001", "model": "m", "role": "prefill"},
        {"url": "http://127.0.0.1:8002", "models": ["m"]},
    ]}
    _write(path, changed)
    assert source.poll()
    assert _ids(registry) == {"127.0.0.1:8001", "127.0.0.1:8002"}
    assert registry.get("127.0.0.1:8001").role.value == "prefill"

    _write(path, {"workers": [{"url": "http://127.0.0.1:8002", "models": ["m"]}]})
    source.poll()
    assert registry.get("127.0.0.1:8001").state is WorkerState.DRAINING
    await eventually(lambda: _ids(registry) == {"127.0.0.1:8002"}, what="removal")


async def test_unchanged_file_is_not_synced_again(tmp_path):
    path = tmp_path / "workers.json"
    _write(path, ONE)
    registry, source = _source(path)
    assert source.poll()
    _write(path, ONE)  # touched, same content
    assert not source.poll()


async def test_garbage_file_keeps_membership_and_warns_once(tmp_path, caplog):
    path = tmp_path / "workers.yaml"
    _write(path, ONE)
    registry, source = _source(path)
    source.poll()
    caplog.set_level(logging.WARNING, logger="corral.discovery.file")

    _write(path, "workers: [ {url: \n")
    assert not source.poll()
    _write(path, "workers: [ {url:   \n")  # same problem, other bytes
    source.poll()
    source.poll()
    assert _ids(registry) == {"127.0.0.1:8001"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "invalid YAML" in warnings[0].getMessage()
    assert source.error is not None

    _write(path, {"workers": [{"url": "http://127.0.0.1:8001", "role": "x"}]})
    source.poll()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert "role" in caplog.records[-1].getMessage()
    assert _ids(registry) == {"127.0.0.1:8001"}

    _write(path, {"workers": []})
    assert source.poll()
    assert source.error is None


async def test_missing_file_keeps_last_good_membership(tmp_path, caplog):
    path = tmp_path / "workers.json"
    _write(path, ONE)
    registry, source = _source(path)
    source.poll()
    caplog.set_level(logging.WARNING, logger="corral.discovery.file")
    path.unlink()
    assert not source.poll()
    assert _ids(registry) == {"127.0.0.1:8001"}
    assert "cannot read it" in caplog.records[-1].getMessage()


async def test_missing_file_at_start_registers_nothing(tmp_path):
    registry, source = _source(tmp_path / "absent.json")
    assert not source.poll()
    assert _ids(registry) == set()
    assert source.error is not None
