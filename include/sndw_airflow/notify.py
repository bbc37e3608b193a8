"""Alerts through Airflow's own notifiers: a source's ``notify:`` (mail by the smtp provider's
SmtpNotifier, Slack, Teams or any webhook by the apprise provider's AppriseNotifier).

The message is written here, redacted by the project's ``redact`` (registered secrets and whatever
looks like one), and handed to the notifier's ``notify`` as it is: no Jinja runs on an error text.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from sndw.audit import error_text, redact

log = logging.getLogger(__name__)

EVENTS = ("failure", "retry_exhausted", "freshness")


def attach(dag: Any, notify: dict[str, Any] | None) -> None:
    """Give every audited task of ``dag`` the source's ``notify`` (read by the failure callbacks)."""
    for task in dag.tasks:
        if hasattr(task, "audit_fields"):
            task.sndw_notify = notify


def wanted(notify: dict[str, Any] | None, *events: str) -> bool:
    return bool(notify) and any(e in (notify or {}).get("on", EVENTS) for e in events)


def notifiers(notify: dict[str, Any], subject: str, text: str) -> list[Any]:
    """The Airflow notifiers of ``notify``'s channels, with the message already in place."""
    found: list[Any] = []
    if notify.get("smtp"):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        smtp = notify["smtp"]
        found.append(SmtpNotifier(to=smtp["to"], from_email=smtp.get("from_email"), smtp_conn_id=smtp["conn_id"],
                                  subject=subject, html_content=f"<pre>{html.escape(text)}</pre>"))
    if notify.get("apprise"):
        from airflow.providers.apprise.notifications.apprise import AppriseNotifier

        apprise = notify["apprise"]
        found.append(AppriseNotifier(body=text, title=subject, tag=apprise.get("tag"),
                                     apprise_conn_id=apprise["conn_id"]))
    return found


def send(notify: dict[str, Any] | None, subject: str, text: str, context: Any) -> list[str]:
    """Send one message on every channel; returns the channels that failed (each failure logged,
    never raised: an alert must not change the task's outcome)."""
    if not notify:
        return []
    subject, text = redact(subject), redact(text)
    failed = []
    for notifier in notifiers(notify, subject, text):
        name = type(notifier).__name__
        try:
            notifier.notify(context)
        except Exception as exc:  # a mail server down must not hide the task's own outcome
            failed.append(name)
            log.warning("notify: %s could not send %r: %s", name, subject, error_text(exc))
        else:
            log.info("notify: %s sent %r", name, subject)
    return failed


def attempt_message(fields: dict[str, Any], partition: Any, error: str | None, attempt: str,
                    log_url: str | None) -> tuple[str, str]:
    """Subject and text of a failed attempt: source, table, partition, error, the log's link."""
    table = fields["target_table"]
    first = (error or "").splitlines()[0] if error else "no error text"
    subject = f"[sndw] {fields['source_name']}: {fields['step']} of {table} failed ({attempt})"
    lines = [
        f"Source:    {fields['source_name']} (DAG {fields['pipeline_name']})",
        f"Table:     {table}",
        f"Step:      {fields['step']}",
        f"Partition: {partition}",
        f"Attempt:   {attempt}",
        f"Error:     {first}",
        f"Log:       {log_url or 'not known'}",
    ]
    if error and error != first:
        lines += ["", error]
    return subject, "\n".join(lines)
