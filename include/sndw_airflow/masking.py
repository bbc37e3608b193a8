"""Every encoded form of a secret the core registers is masked in Airflow's task logs as well."""

from __future__ import annotations

from sndw.audit import add_secret_listener


def _mask(forms: list[str]) -> None:
    from airflow.sdk.log import mask_secret

    # one call with the list: in a task, Airflow forwards each call to its supervisor process
    mask_secret(list(forms))


def mask_registered_secrets() -> None:
    """Forward the core's registry (``sndw.audit.register_secret``) to Airflow's masker; idempotent."""
    add_secret_listener(_mask)
