"""The DAG factory for http tables that unnest lists: one more load per child table, after the parent's."""

from __future__ import annotations

from sndw.config import parse_source


def test_child_tables_get_their_own_load_after_the_parent_load() -> None:
    from sndw_airflow.factory import build_dag

    source = parse_source({"name": "blog", "kind": "http", "conn_id": "blog_api", "start_date": "2024-01-01",
                           "auth": "bearer", "tables": [
                               {"name": "posts", "endpoint": "/posts", "write_mode": "merge", "primary_key": ["id"],
                                "unnest": ["comments", "meta.tags"]},
                               {"name": "authors", "endpoint": "/authors"}]}, "blog.yaml")
    dag = build_dag(source)
    assert sorted(dag.task_ids) == ["extract_authors", "extract_posts", "load_authors", "load_posts",
                                    "load_posts__comments", "load_posts__meta__tags"]
    child = dag.get_task("load_posts__comments")
    assert dag.get_task("load_posts").downstream_task_ids == {"load_posts__comments", "load_posts__meta__tags"}
    assert child.upstream_task_ids == {"extract_posts", "load_posts"}  # the XComArg adds the extract
    assert (child.target_table, child.write_mode, child.primary_key) == (
        "posts__comments", "merge", ["parent__id", "parent__index"])
    assert child.manifest.operator.task_id == "extract_posts" and child.manifest.key == "manifest__posts__comments"
    assert dag.get_task("extract_posts").table["auth"] == "bearer"  # the source's default reaches the task
    assert dag.get_task("load_authors").downstream_task_ids == set()  # single tables are unchanged
