"""Typed JSONL records on disk: atomic writes, and reads that name file, line and field on bad input."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from selfalign.errors import SelfAlignError

Record = TypeVar("Record", bound=BaseModel)


class DataFileError(SelfAlignError, ValueError):
    """Bad input in a data file; the message names the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str, unit: str = "line"):
        self.path, self.line, self.field, self.problem, self.unit = str(path), line, field, problem, unit
        where = str(path) + (f", {unit} {line}" if line is not None else "")
        what = f", field '{field}'" if field else ""
        super().__init__(f"{where}{what}: {problem}")


class OutputError(SelfAlignError, OSError):
    """An output cannot be written where it was asked for; the message names the path and why."""


_OS_REASONS = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "the disk quota is exhausted", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
               errno.EISDIR: "is a folder", errno.ENAMETOOLONG: "the name is too long",
               errno.EMFILE: "too many open files", errno.EFBIG: "the file is too large for this file system"}


def describe_os_error(error: OSError, path: str | Path | None = None) -> str | None:
    """One line naming the path (`path`, else the error's own) and the reason for the file-system failures a user can
    fix (read-only or full disk, permissions, a file where a folder must be); None for any other OSError (a bug keeps
    its traceback)."""
    reason = _OS_REASONS.get(error.errno)
    if reason is None:
        return None
    where = path or error.filename or "an output"
    also = f" -> {error.filename2}" if path is None and getattr(error, "filename2", None) else ""
    return (f"{where}{also}: {reason} ({error.strerror or 'OS error'}); outputs are written atomically, so nothing "
            "half-written was left and earlier files are as they were")


@contextlib.contextmanager
def _named_os_errors(path: Path) -> Iterator[None]:
    """A fixable OSError while writing `path` (through its temporary file) becomes an OutputError naming `path`."""
    try:
        yield
    except OSError as e:
        if isinstance(e, OutputError) or e.errno not in _OS_REASONS:
            raise
        raise OutputError(describe_os_error(e, path)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_output(path: str | Path, kind: str = "file", inputs: Iterable[str | Path] = ()) -> Path:
    """Check that `path` can be written as a `kind` ('file' or 'folder') and is none of `inputs` (writing there would
    replace what is being read), and make its parent folders."""
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise OutputError(f"{path}: is also the input {source}; writing there would replace it. Give another "
                              "output path")
    if kind == "file" and path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file path for the output")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give a folder path for the output")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot be created, {parent} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create its folder ({e.strerror})") from None
    return path


def require_records(records: list, path: str | Path, what: str) -> list:
    """An empty input is an error, never an empty output replacing a good one."""
    if not records:
        raise DataFileError(path, None, None, f"holds no {what}; nothing was written")
    return records


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block finishes.

    A kill mid-write leaves the old file (or nothing) in place, never half a file. The result gets the ordinary
    mode of a new file under the user's umask (mkstemp's temporary file is private).
    """
    path = prepare_output(path)
    with _named_os_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def check_replaceable(path: str | Path, marker: str, inputs: Iterable[str | Path] = ()) -> None:
    """Replacing a folder deletes what it holds, so it is allowed only for a folder this project wrote (it holds
    `marker`), and never for the current folder, a folder above it, an input, or a folder that holds an input.
    Raises OutputError naming the path and the rule; a folder that does not exist or is empty passes."""
    path = Path(path)
    resolved, here = path.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise OutputError(f"{path}: is the current folder or one above it; selfalign never replaces it. Give a new "
                          "folder for the output")
    for source in inputs:
        source_resolved = Path(source).resolve()
        if source_resolved == resolved or resolved in source_resolved.parents:
            raise OutputError(f"{path}: {'is' if source_resolved == resolved else 'holds'} the input {source}; "
                              "writing there would destroy it. Give another folder for the output")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise OutputError(f"{path}: holds files selfalign did not write (no {marker}); it is not replaced, even "
                          "with --force. Give a new or empty folder for the output")


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False, marker: str | None = None,
               inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside `path`, renamed to `path` when the block finishes. With `force` an existing
    `path` is replaced, but only where `check_replaceable(path, marker, inputs)` allows it."""
    path = prepare_output(path, kind="folder")
    if force and marker is not None:
        check_replaceable(path, marker, inputs)
    with _named_os_errors(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _named_os_errors(path):
            yield tmp
            if path.exists():
                if not force:
                    raise OutputError(f"{path} appeared while writing; not overwriting it")
                if marker is not None:
                    check_replaceable(path, marker, inputs)  # again: the folder may have changed while we worked
                shutil.rmtree(path)
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> int:
    """Write records as JSONL atomically; return how many were written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            row = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; bad JSON raises DataFileError."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, None, None, "file not found")
    if path.is_dir():
        raise DataFileError(path, None, None, "is a folder, not a JSONL file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DataFileError(path, None, None, "is not a regular file (a pipe or device?); save it to a file first")
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(path, line_number, None, f"not UTF-8 text (byte {e.start + 1} of the line)") \
                    from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(path, line_number, None, f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFileError(path, line_number, None, "expected a JSON object")
            yield line_number, obj


def read_jsonl(path: str | Path, record_type: type[Record]) -> list[Record]:
    """Read and validate every line as `record_type`; the first bad one raises DataFileError."""
    return validate_rows(path, read_json_lines(path), record_type)


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


def fingerprint(settings: dict | None = None, records: Iterable[BaseModel] = (),
                files: Iterable[str | Path] = ()) -> str:
    """The one fingerprint every resume checks (a judge partial, a training folder, judge-train's steps, the loop's
    engine jobs): a hash of `settings` (when given), the records' content and the files' bytes, in that order. An
    output is continued only when the fingerprint it was written under matches the one computed now."""
    digest = hashlib.sha256()
    if settings is not None:
        digest.update(json.dumps(settings, sort_keys=True).encode())
    for record in records:
        digest.update(record.model_dump_json().encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def describe_changes(before: dict, after: dict, limit: int = 3) -> str:
    """What differs between the settings an output was written under and today's, for every resume's refusal:
    `iterations: 1 there, 2 now; train.beta: 0.1 there, 0.2 now` (nested fields dotted; at most `limit`, then how
    many more); empty when no setting differs."""
    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(before), flat(after)
    missing = object()
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]
    text = "; ".join(f"{k}: {old.get(k, 'unset')!r} there, {new.get(k, 'unset')!r} now" for k in changed[:limit])
    if len(changed) > limit:
        text += f"; and {len(changed) - limit} more"
    return text


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
