"""Sources by api type: a new source is one new module and one entry here."""

from __future__ import annotations

from collections.abc import Callable

from marketpipe.components import ApiConfig
from marketpipe.config import IngestRequest
from marketpipe.errors import UsageError
from marketpipe.sources.base import Source


def _databento(request: IngestRequest, api: ApiConfig) -> Source:
    if request.from_file:
        from marketpipe.sources.databento_files import DbnFileSource

        return DbnFileSource(request.from_file)
    from marketpipe.sources.databento_api import DatabentoApiSource

    return DatabentoApiSource(request, api)


SOURCES: dict[str, Callable[[IngestRequest, ApiConfig], Source]] = {"databento": _databento}


def make_source(request: IngestRequest, api: ApiConfig) -> Source:
    try:
        factory = SOURCES[request.api]
    except KeyError:
        raise UsageError(f"unknown api type {request.api!r}; known: {', '.join(sorted(SOURCES))}") from None
    return factory(request, api)
