"""Python transforms: a table's ``transform: package.module:function``, applied to each batch on its
way from the lake into the warehouse.

The lake keeps the source's data as extracted; the transform runs at load time, so a replay
applies the transform the config names now. The function takes a ``pyarrow.RecordBatch`` or a
``polars.DataFrame``, by the annotation of its first parameter, and returns the same kind. It is
imported at run time from the project's own code: the ``transforms/`` package beside the DAGs
(``dags/transforms``), or ``include/``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from sndw.errors import PermanentError
from sndw.naming import validate_transform_reference
from sndw.typeplan import pg_type_for

# dags/ of this project, for the command line (Airflow puts its DAGs folder on sys.path itself).
PROJECT_DAGS = Path(__file__).resolve().parents[2] / "dags"


class TransformError(PermanentError):
    """A transform could not be imported, raised, or returned something the load cannot use."""


def _search_folders() -> list[Path]:
    folders = []
    dags_folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    if dags_folder:
        folders.append(Path(dags_folder))
    folders.append(PROJECT_DAGS)
    return [f for f in folders if f.is_dir()]


def _import(module_name: str) -> Any:
    """Import from sys.path; failing that, with the DAGs folder (tests, the command line) on it too."""
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the transform's own module is there; something it imports is not
        added = False
        for folder in _search_folders():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
                added = True
        if not added:
            raise
        return importlib.import_module(module_name)


def _kind(function: Callable[..., Any], reference: str) -> Literal["arrow", "polars"]:
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters:
        raise TransformError(f"transform {reference}: the function takes no parameter; it receives one batch")
    first = parameters[0]
    try:
        annotation = typing.get_type_hints(function).get(first.name, first.annotation)
    except Exception:  # an annotation that does not resolve: judge it by its text
        annotation = first.annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__qualname__", str(annotation))
    module = "" if isinstance(annotation, str) else getattr(annotation, "__module__", "")
    if annotation is pa.RecordBatch or text in ("pa.RecordBatch", "pyarrow.RecordBatch", "RecordBatch"):
        return "arrow"
    if (text in ("pl.DataFrame", "polars.DataFrame", "DataFrame")
            and (isinstance(annotation, str) or module.startswith("polars"))):
        return "polars"
    raise TransformError(f"transform {reference}: annotate its first parameter {first.name!r} as "
                         f"pyarrow.RecordBatch or polars.DataFrame (got {text or 'no annotation'})")


@dataclass(frozen=True)
class BatchTransform:
    """A resolved transform: lake batch in, warehouse batch out, whichever kind the function takes."""

    reference: str
    function: Callable[..., Any]
    kind: Literal["arrow", "polars"]

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.kind == "arrow":
            out = self.function(batch)
            if isinstance(out, pa.Table):
                out = _one_batch(out)
            if not isinstance(out, pa.RecordBatch):
                raise TypeError(f"returned {type(out).__name__}, not a pyarrow.RecordBatch")
        else:
            import polars as pl

            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            result = self.function(frame)
            if not isinstance(result, pl.DataFrame):
                raise TypeError(f"returned {type(result).__name__}, not a polars.DataFrame")
            # The oldest level gives plain strings (not string views), as the lake holds them.
            out = _one_batch(result.to_arrow(compat_level=pl.CompatLevel.oldest()))
        return _like_input(out, batch.schema)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    table = table.combine_chunks()
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema) if not batches else pa.concat_batches(batches)


def _like_input(out: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Columns the transform passed through keep the lake's exact type and its source-type metadata
    (a round trip through polars gives large strings, and drops the metadata): their warehouse
    columns stay what they are without the transform."""
    fields, arrays, changed = [], [], False
    for fld, column in zip(out.schema, out.columns, strict=True):
        index = schema.get_field_index(fld.name)
        source = schema.field(index) if index >= 0 else None
        if source is not None and (source.type != fld.type or source.metadata != fld.metadata) \
                and pg_type_for(source.type) == pg_type_for(fld.type):
            try:
                column = _cast(column, source.type) if source.type != fld.type else column
                fld = source.with_nullable(fld.nullable)
                changed = True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass  # a value that does not fit the lake's type: the column keeps the transform's
        fields.append(fld)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)) if changed else out


def _cast(column: pa.Array, target: pa.DataType) -> pa.Array:
    """A safe cast; an extension type (``arrow.json``) through its storage type."""
    if isinstance(target, pa.BaseExtensionType):
        storage = column.storage if isinstance(column, pa.ExtensionArray) else column
        return pa.ExtensionArray.from_storage(target, storage.cast(target.storage_type))
    return column.cast(target)


def load_transform(reference: str) -> BatchTransform:
    """Import ``package.module:function`` and tell which kind of batch it takes."""
    validate_transform_reference(reference)
    module_name, function_name = reference.split(":")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        where = ", ".join(str(f) for f in _search_folders()) or "sys.path"
        raise TransformError(f"transform {reference}: cannot import {module_name} ({exc}); put it in the "
                             f"transforms/ package beside the DAGs (searched sys.path and {where})") from None
    except Exception as exc:
        raise TransformError(f"transform {reference}: importing {module_name} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TransformError(f"transform {reference}: {module_name} has no function {function_name!r}")
    return BatchTransform(reference, function, _kind(function, reference))


def transformed_batches(transform: BatchTransform, table: str, path: str,
                        batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Each batch through the transform; a failure names the table, the file, the batch and the function."""
    for number, batch in enumerate(batches, 1):
        try:
            yield transform(batch)
        except Exception as exc:
            raise TransformError(f"{table}: transform {transform.reference} failed on batch {number} "
                                 f"({batch.num_rows} rows) of {path}: {type(exc).__name__}: {exc}") from exc


def output_schema(transform: BatchTransform, table: str, path: str, batch_rows: int) -> pa.Schema:
    """The warehouse schema of one lake file: its first batch through the transform (one batch in
    memory, never the file); an empty file's schema as an empty batch through it."""
    from sndw import storage
    from sndw.lake import iter_file_batches

    batches = iter_file_batches(path, batch_rows)
    first = next(batches, None)
    getattr(batches, "close", lambda: None)()  # the file closes now, not when collected
    if first is None:
        first = pa.RecordBatch.from_pylist([], schema=storage.read_schema(path))
    return next(transformed_batches(transform, table, path, iter([first]))).schema
