"""Records from where users keep them: a JSONL file, a Parquet file, or a dataset on the hub (or a local dataset
folder), through `datasets`. Every row is validated as the record type, and a bad row names the source, the row
(the line in a JSONL file, the 1-based row elsewhere) and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

from pydantic import BaseModel, ValidationError

from selfalign.io import DataFileError, read_json_lines

Record = TypeVar("Record", bound=BaseModel)
PARQUET_SUFFIXES = (".parquet", ".pq")


def validate_rows(source: str | Path, rows: Iterable[tuple[int, dict]], record_type: type[Record],
                  unit: str = "line") -> list[Record]:
    records = []
    for number, row in rows:
        try:
            records.append(record_type.model_validate(row))
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            raise DataFileError(source, number, field, err["msg"].removeprefix("Value error, "), unit=unit) from None
    return records


def read_records(source: str | Path, record_type: type[Record], split: str = "train") -> list[Record]:
    """`source`: a .jsonl/.json-lines file, a .parquet file, a local dataset folder, or a hub dataset id."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES:
        return validate_rows(path, _parquet_rows(path), record_type, unit="row")
    if path.is_file() or path.suffix.lower() in (".jsonl", ".json"):
        return validate_rows(path, read_json_lines(path), record_type)
    return validate_rows(f"{source} (split {split})", _dataset_rows(str(source), split), record_type, unit="row")


def _parquet_rows(path: Path) -> Iterable[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DataFileError(path, None, None, f"not a readable Parquet file ({e})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def _dataset_rows(name: str, split: str) -> Iterable[tuple[int, dict]]:
    """A hub dataset id (or a local dataset folder) through `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFileError(name, None, None, f"not a file here, and not loadable as a dataset with split "
                                              f"{split!r}: {problem}") from None
    for number, row in enumerate(dataset, start=1):
        yield number, row
