"""What the Airflow UI shows of a source: the DAG's doc (its tables and the YAML itself) and one doc
line per task, so a reader never needs the config file or the factory's code to know what runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sndw.audit import redact
from sndw.naming import extract_task_id, load_task_id, qualified

MAX_CELL = 160


def _cell(text: Any) -> str:
    value = " ".join(str(text).split()) if text not in (None, "") else "-"
    value = value if len(value) <= MAX_CELL else value[: MAX_CELL - 3] + "..."
    return value.replace("|", "\\|")


def reads(table: Any) -> str:
    """What a table reads: the SQL query or table, the HTTP endpoint, or the file path."""
    for attr, label in (("query", "query"), ("table", "table"), ("endpoint", "endpoint"), ("path", "path")):
        value = getattr(table, attr, None)
        if isinstance(value, str) and value:
            return f"{label}: {value}"
    return "-"


def _fence(text: str) -> str:
    ticks = 3
    while "`" * ticks in text:
        ticks += 1
    return "`" * ticks


def dag_doc(source: Any, config_path: str | os.PathLike[str] | None = None) -> str:
    """Markdown: the source's description, schedule, a table per configured table, and its YAML."""
    lines = [f"## {source.name}", "", source.description or f"{source.kind} source {source.name}", "",
             f"**Kind:** {source.kind} &nbsp; **Schedule:** `{source.schedule or 'manual'}` &nbsp; "
             f"**Start:** {source.start_date} &nbsp; **Catchup:** {source.catchup} &nbsp; "
             f"**Warehouse:** `{source.dw_conn_id}` / schema `{source.target_schema}`"
             + (f" &nbsp; **Connection:** `{source.conn_id}`" if getattr(source, "conn_id", None) else ""),
             "", "| table | reads | target | write mode | keys | incremental cursor |",
             "|---|---|---|---|---|---|"]
    for table in source.tables:
        cursor = table.incremental.cursor if table.incremental else None
        lines.append("| " + " | ".join(_cell(v) for v in (
            table.name, reads(table), qualified(source.target_schema, table.target), table.write_mode,
            ", ".join(table.key_columns), cursor)) + " |")
        for child in getattr(table, "child_tables", []):
            lines.append("| " + " | ".join(_cell(v) for v in (
                child.name, f"unnested list {child.path} of {table.name}",
                qualified(source.target_schema, child.target), child.write_mode,
                ", ".join(child.key_columns), None)) + " |")
    if config_path:
        path = Path(config_path)
        try:
            text = redact(path.read_text(encoding="utf-8"))
        except OSError as exc:
            text = f"(cannot read {path.name}: {exc.strerror})"
        fence = _fence(text)
        lines += ["", f"### Config `{path.name}`", "", f"{fence}yaml", text.rstrip("\n"), fence]
    return "\n".join(lines)


def task_docs(source: Any) -> dict[str, str]:
    """One doc line per task id the factory builds for ``source``."""
    docs: dict[str, str] = {}
    for table in source.tables:
        docs[extract_task_id(table.name)] = (
            f"Extract `{table.name}` ({_cell(reads(table))}) from {source.kind} source `{source.name}` "
            f"into the lake partition of the run's date"
            + (f", from the watermark of `{table.incremental.cursor}`" if table.incremental else "") + ".")
        if getattr(table, "parallel", 1) > 1:
            docs[f"plan_{table.name}"] = (
                f"Split the extract of `{table.name}` into {table.parallel} ranges (of its key, or of its blocks).")
            docs[f"ranges_{table.name}"] = (
                f"Extract one range of `{table.name}` into the lake's staging (one mapped task per range, each "
                "retried alone).")
            docs[extract_task_id(table.name)] = (
                f"Publish the ranges of `{table.name}` as the lake partition of the run's date, in one step.")
        for item in [table, *getattr(table, "child_tables", [])]:
            keys = ", ".join(item.key_columns)
            docs[load_task_id(item.name)] = (
                f"Load the lake partition of `{item.name}` into `{qualified(source.target_schema, item.target)}` "
                f"({item.write_mode}{', keys ' + keys if keys else ''}) and write its audit row.")
        sink = getattr(table, "elasticsearch", None)
        if sink:
            docs[f"index_{table.name}"] = (
                f"Index the lake partition of `{table.name}` into Elasticsearch index `{sink.index}` "
                f"(connection `{sink.conn_id}`, ids from {', '.join(sink.id_columns or table.primary_key)}) "
                "after its load.")
    for step in getattr(source, "sql_steps", []):
        target = getattr(step, "target", None)
        docs[f"sql_{step.name}"] = (f"Run SQL step `{step.name}` in the warehouse after the loads"
                                    + (f", building `{target}`" if target else "") + ".")
    return docs


def document_tasks(dag: Any, source: Any) -> None:
    """Give every task of the source's DAG its doc line (tasks that have one keep it)."""
    docs = task_docs(source)
    for task in dag.tasks:
        if not task.doc_md:
            doc = docs.get(task.task_id, f"Task of source `{source.name}`.")
            if getattr(task, "is_mapped", False):  # a mapped task (ranges_<table>): its doc is a partial() argument
                task.partial_kwargs["doc_md"] = doc
            else:
                task.doc_md = doc
