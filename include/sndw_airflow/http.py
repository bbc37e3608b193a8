"""The fetch function the core's HTTP extractor calls, built on the HTTP provider's HttpHook."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sndw.config import HttpTable
from sndw.errors import SourceDataError

BODY_EXCERPT = 200


def relative_endpoint(base_url: str, url: str) -> str:
    """A next-page link as an endpoint of the hook's connection (the hook joins it to the base)."""
    if not url.startswith(("http://", "https://")):
        return url
    base = base_url.rstrip("/")
    if base and url.startswith(base):
        return url[len(base):]
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def hook_fetch(hook: Any, spec: HttpTable) -> Any:
    def fetch(endpoint: str, params: dict[str, Any]) -> Any:
        if endpoint.startswith(("http://", "https://")):
            hook.url_from_endpoint("")  # makes the hook read its connection's base URL
            endpoint = relative_endpoint(hook.base_url or "", endpoint)
        response = hook.run(endpoint, data=params or None, headers=spec.headers or None,
                            extra_options={"timeout": spec.timeout_seconds})
        try:
            return response.json()
        except ValueError as exc:
            excerpt = response.text[:BODY_EXCERPT].replace("\n", " ")
            raise SourceDataError(
                f"{spec.name}: {response.status_code} from {urlsplit(response.url).path} is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')}): {excerpt!r}") from exc

    return fetch
