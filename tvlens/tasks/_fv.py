"""The paper-sized word-pair tasks of the function-vectors repository, fetched once and pinned.

Context: tvlens's own word lists (``capitalize``, ``antonym``, ``capital``) are small; the LTV
paper and the function-vector papers use the files of ericwtodd/function_vectors
(``dataset_files/abstractive/*.json``, MIT licence). ``tv.tasks.get("fv/capitalize")`` loads one:
from ``$TVLENS_FV_DIR`` when that names a local copy, else from tvlens's cache, else it downloads
the file at a pinned commit. Every file is checked against its sha256 before use, wherever it
came from. Without network (and no copy) the error says how to load a local file instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tvlens._io import atomic_write, cache_dir, sha256_file
from tvlens.errors import DatasetUnavailableError
from tvlens.tasks._registry import register
from tvlens.tasks._task import Task

log = logging.getLogger(__name__)

FV_COMMIT = "fb9eac7b6dc707ea1475a717379916007fe448d5"
FV_URL = "https://github.com/ericwtodd/function_vectors/raw/{commit}/dataset_files/abstractive/{file}"
FV_DIR_ENV = "TVLENS_FV_DIR"  # a local folder holding the files (e.g. a clone's dataset_files/abstractive)
DOWNLOAD_TIMEOUT_S = 10.0

# file -> (sha256 of the file at FV_COMMIT, number of pairs, description)
FV_FILES: dict[str, tuple[str, int, str]] = {
    "antonym": ("ba66e8e399944b557251b11a37b11f9ba7a50f0a57286f7021a8a7b26b469e8d", 2398, "word -> antonym"),
    "capitalize": ("9aad849c761de2f0c6195eb73496a0cfe7e600751b0d61a3c82709b1a3dcd53f", 813, "word -> Capitalized word"),
    "country-capital": ("5748cbfb789c2d671f8a88bf8eaa8a800ead77299e34e1d0cafae11b0409782b", 197, "country -> capital city"),
    "english-french": ("766fa28cc696f37b1009f36372372797be03444045c58bc554759f3e177638cc", 4698, "English word -> French word"),
}


def fv_task(name: str) -> Task:
    """The function-vectors task ``name`` (a key of :data:`FV_FILES`) as a word-pair Task."""
    from tvlens.tasks._wordpairs import load_function_vectors_json

    path = fv_file(name)
    return load_function_vectors_json(path, f"fv/{name}")


def fv_file(name: str) -> Path:
    """A verified local copy of the function-vectors file ``name`` (downloaded once if needed)."""
    if name not in FV_FILES:
        raise DatasetUnavailableError(f"no function-vectors file {name!r}; tvlens pins {sorted(FV_FILES)}")
    sha, _, _ = FV_FILES[name]
    filename = f"{name}.json"
    local = os.environ.get(FV_DIR_ENV)
    if local:
        path = Path(local).expanduser() / filename
        if not path.is_file():
            raise DatasetUnavailableError(f"${FV_DIR_ENV} is {local!r}, which has no {filename}; unset it or add the file")
        if sha256_file(path) != sha:
            raise DatasetUnavailableError(
                f"{path} is not the pinned {filename} (sha256 differs from commit {FV_COMMIT[:7]}); use the file of "
                f"that commit, or load your version with tv.tasks.load_function_vectors_json({str(path)!r})"
            )
        return path
    cached = cache_dir() / "function_vectors" / FV_COMMIT[:12] / filename
    if cached.is_file():
        if sha256_file(cached) == sha:
            return cached
        log.warning("cached %s does not match its checksum; downloading it again", cached)
    url = FV_URL.format(commit=FV_COMMIT, file=filename)
    advice = (
        f"copy the file from a machine with network ({url}) and load it with "
        f"tv.tasks.load_function_vectors_json(path) (or tv.tasks.from_file), or set ${FV_DIR_ENV} to the folder holding it"
    )
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 (fixed https URL)
            data = response.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DatasetUnavailableError(f"could not download {filename} ({type(exc).__name__}: {exc}); no network? {advice}") from exc
    if hashlib.sha256(data).hexdigest() != sha:
        raise DatasetUnavailableError(f"the download of {url} does not match its pinned sha256; {advice}")
    atomic_write(cached, lambda tmp: tmp.write_bytes(data))
    log.info("downloaded %s to %s", url, cached)
    return cached


def _register_all() -> None:
    for name, (_, n, desc) in FV_FILES.items():
        register(f"fv/{name}", (lambda name=name: fv_task(name)), f"{desc} ({n} pairs, function-vectors repo; downloaded once)")
