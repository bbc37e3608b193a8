"""The core's HTTP client on a session from the HTTP provider's HttpHook (the Airflow connection).

The hook gives the session everything its connection configures: base URL (host, schema, port),
TLS verification, proxies, certificates, default headers from the extra, and basic auth when the
connection has a login. The table's ``auth`` then decides what is sent (``sndw.extract.http.
resolve_auth``): basic keeps the hook's own basic auth; bearer and API keys take the secret from
the connection's password; ``none`` sends nothing. The extra's ``api_key_header`` /
``api_key_param`` name where the key goes and are never sent as headers themselves (the hook
would send every unknown extra key as a header).
"""

from __future__ import annotations

from typing import Any

from sndw.config import HttpTable
from sndw.extract.http import AUTH_EXTRA_KEYS, HttpClient, register_header_secrets, resolve_auth


def hook_client(hook: Any, spec: HttpTable) -> HttpClient:
    """An ``HttpClient`` (a ``Fetch``) for ``spec`` on ``hook``'s connection; close it when done."""
    connection = hook.get_connection(hook.http_conn_id)
    plan = resolve_auth(spec.auth, connection.login, connection.password, connection.extra_dejson,
                        where=f"connection {hook.http_conn_id!r}")
    register_header_secrets(spec.headers)  # resolve_auth registered the password and the extra's
    session = hook.get_conn()  # reads the connection once: base URL, extra options, basic auth
    for key in AUTH_EXTRA_KEYS:
        session.headers.pop(key, None)
    if plan.scheme == "basic" and session.auth is not None:
        plan.auth = session.auth  # HttpHook's own basic auth (its auth_type) from login/password
    return HttpClient(session, hook.base_url, spec, plan=plan)

