"""Records from where users keep them: a JSONL file, a JSON array, a Parquet file, a `save_to_disk` folder, or a
dataset on the hub (or a local dataset folder), through `datasets`. Every row is validated as the record type, and a
bad row names the source, the row (the line in a JSONL file, the 1-based row elsewhere) and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

from pydantic import BaseModel

from selfalign.io import DataFileError, read_json_lines, validate_rows

Record = TypeVar("Record", bound=BaseModel)
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_records(source: str | Path, record_type: type[Record], split: str = "train") -> list[Record]:
    """`source`: a .jsonl file, a .json file (JSON lines, or one JSON array of rows), a .parquet file, a folder
    written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`, or a hub dataset id."""
    label, rows, unit = source_rows(source, split)
    return validate_rows(label, rows, record_type, unit=unit)


def source_rows(source: str | Path, split: str = "train") -> tuple[str, Iterable[tuple[int, dict]], str]:
    """(how errors name the source, its numbered rows, what a number counts: line, row or item)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES:
        return str(path), _parquet_rows(path), "row"
    if path.is_file() and path.suffix.lower() == ".json" and _starts_with(path, b"["):
        return str(path), _json_array_rows(path), "item"
    if path.is_file() or path.suffix.lower() in (".jsonl", ".json"):
        return str(path), read_json_lines(path), "line"
    if path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
        return f"{source} (split {split})", _saved_rows(path, split), "row"
    return f"{source} (split {split})", _dataset_rows(str(source), split), "row"


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(prefix)


def _json_array_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """A .json file holding one array of row objects (what `json.dump(rows)` and many exports write)."""
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFileError(path, None, None, f"not a valid JSON array ({e})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFileError(path, number, None, "expected a JSON object", unit="item")
        yield number, row


def _saved_rows(path: Path, split: str) -> Iterable[tuple[int, dict]]:
    """A folder of `save_to_disk`: one Dataset, or a DatasetDict whose `split` is read."""
    import datasets

    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataFileError(path, None, None, f"a saved DatasetDict without split {split!r} (it has "
                                                  f"{', '.join(saved)}); pass --split")
        saved = saved[split]
    for number, row in enumerate(saved, start=1):
        yield number, row


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
