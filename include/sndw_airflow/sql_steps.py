"""SQL steps after a source's loads: the common-sql provider's operator, audited like the other tasks."""

from __future__ import annotations

from typing import Any

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator

from sndw_airflow.operators import _SndwTask, _with_audit_callbacks


class SqlStepOperator(_SndwTask, SQLExecuteQueryOperator):
    """Run one step's SQL in the warehouse (the ``dw`` connection), in one transaction.

    ``SQLExecuteQueryOperator`` does the work: the statements are split and run on one connection
    and committed together, so a failing statement leaves nothing of the step behind. This adds
    ``{{ partition_date }}`` to the template context and an ``etl_audit_log`` row (step ``sql``)
    per attempt, success or failure, through the same callbacks as the extracts and loads.

    :param source: the source's name (audit rows)
    :param kind: the source's kind (audit rows)
    :param step: the step's name
    :param sql: the SQL (templated)
    :param target: the table the step builds, for the audit row; default ``sql:<source>/<step>``
    :param dw_conn_id: the warehouse's Airflow connection
    """

    ui_color = "#fdf0d5"

    def __init__(self, *, source: str, kind: str, step: str, sql: str, target: str | None = None,
                 dw_conn_id: str = "dw", **kwargs: Any) -> None:
        kwargs.setdefault("do_xcom_push", False)  # steps build tables; they return no rows
        super().__init__(sql=sql, conn_id=dw_conn_id, autocommit=False, split_statements=True,
                         **_with_audit_callbacks(kwargs))
        self.source = source
        self.kind = kind
        self.step = step
        self.target = target
        self.dw_conn_id = dw_conn_id
        self.sndw_result: dict[str, Any] | None = None

    def audit_fields(self) -> dict[str, str]:
        return {"pipeline_name": self.dag_id, "source_name": self.source, "protocol": self.kind,
                "target_table": self.target or f"sql:{self.source}/{self.step}", "step": "sql"}
