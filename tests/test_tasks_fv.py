"""Function-vectors task sources: pinned checksums, local copies, cache, and the offline error.

The reference copies in ../shared/data/function_vectors (beside the checkout) stand in for the
download; they are read in place, never copied into the project.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

import tvlens as tv
from tvlens._io import sha256_file
import tvlens.tasks._fv as fv
from tvlens.errors import DatasetUnavailableError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "function_vectors"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="reference data ../shared/data not beside this checkout")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TVLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(fv.FV_DIR_ENV, raising=False)


def test_registered_with_descriptions():
    names = tv.tasks.names("fv/")
    assert names == sorted(f"fv/{n}" for n in fv.FV_FILES)
    assert "813 pairs" in tv.tasks.describe("fv/capitalize")


@needs_shared
@pytest.mark.parametrize("name", sorted(fv.FV_FILES))
def test_local_copies_match_the_pins(name, monkeypatch, no_network):
    monkeypatch.setenv(fv.FV_DIR_ENV, str(SHARED))
    task = tv.tasks.get(f"fv/{name}")
    sha, n_pairs, _ = fv.FV_FILES[name]
    assert task.name == f"fv/{name}" and task.kind == "generation"
    assert 0.95 * n_pairs <= len(task) <= n_pairs  # duplicate pairs may be dropped
    assert task.template_name == "qa" and task.prompt_text(task.examples[0]).endswith("\nA:")  # the function-vectors format


@needs_shared
def test_local_copy_with_other_content_is_refused(tmp_path, monkeypatch, no_network):
    (tmp_path / "capitalize.json").write_text('[{"input": "a", "output": "A"}]')
    monkeypatch.setenv(fv.FV_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetUnavailableError, match="not the pinned capitalize.json.*load_function_vectors_json"):
        fv.fv_task("capitalize")  # (tv.tasks.get caches tasks by name)


def test_offline_error_names_the_local_loaders(no_network):
    with pytest.raises(DatasetUnavailableError, match=r"no network\?.*load_function_vectors_json.*from_file"):
        fv.fv_file("capitalize")


class _FakeResponse:
    def __init__(self, data: bytes):
        self.data = data

    def read(self) -> bytes:
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@needs_shared
def test_download_is_verified_and_cached(monkeypatch, tmp_path):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return _FakeResponse((SHARED / "country-capital.json").read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = fv.fv_file("country-capital")
    assert calls == [fv.FV_URL.format(commit=fv.FV_COMMIT, file="country-capital.json")]
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    assert fv.fv_file("country-capital") == path and len(calls) == 1  # second call: the cache
    path.write_text("[]")  # a damaged cache entry is fetched again, not trusted
    fv.fv_file("country-capital")
    assert len(calls) == 2 and sha256_file(path) == fv.FV_FILES["country-capital"][0]


def test_tampered_download_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b'[{"input": "x", "output": "y"}]'))
    with pytest.raises(DatasetUnavailableError, match="does not match its pinned sha256"):
        fv.fv_file("capitalize")
    assert not list((tmp_path / "cache").rglob("*.json"))
