from __future__ import annotations

import logging
from datetime import date

import pytest
from sndw.naming import lake_partition_dir, normalize_identifier, partition_child_table, unique_column_names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("userId", "user_id"),
        ("FIRST APPEARANCE", "first_appearance"),
        ("address__geo__lat", "address__geo__lat"),
        ("Year", "year"),
        ("HTTPStatusCode", "http_status_code"),
        ("  price (EUR) ", "price_eur"),
        ("2nd_place", "_2nd_place"),
        ("---", "column"),
        ("Ação", "ação"),  # letters of any script are kept (they were dropped: issue 9)
        ("café", "café"),
        ("Ünïcödé Col", "ünïcödé_col"),
        ("日本語 列", "日本語_列"),
    ],
)
def test_normalize_identifier(raw: str, expected: str) -> None:
    assert normalize_identifier(raw) == expected


def test_identifiers_are_cut_to_63_bytes() -> None:
    assert len(normalize_identifier("x" * 100).encode()) == 63


def test_a_cut_never_splits_a_character() -> None:
    cut = normalize_identifier("é" * 40)  # 2 bytes each: 31 fit in 63 bytes, the 32nd would not
    assert cut == "é" * 31 and len(cut.encode()) == 62


def test_collisions_are_made_unique_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        names = unique_column_names(["Year", "YEAR", "year", "_loaded_at"])
    assert names == ["year", "year_2", "year_3", "loaded_at"]
    assert "already taken" in caplog.text


def test_meta_column_names_are_never_reused() -> None:
    assert unique_column_names(["_source_file"]) == ["source_file"]
    assert unique_column_names(["source file", "_run_id"]) == ["source_file", "run_id"]


def test_lake_layout_and_partition_child() -> None:
    path = lake_partition_dir("/lake", "sql", "crm", "orders", date(2024, 3, 1))
    assert str(path) == "/lake/sql/crm/orders/2024-03-01"
    assert partition_child_table("orders", date(2024, 3, 1)) == "orders__p20240301"
