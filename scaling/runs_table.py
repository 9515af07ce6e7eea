"""The runs table: one row per finished trial, the input of law fitting, as CSV or Parquet.

Columns (units; a multiply-add counts as 2 FLOPs):
- `compute` (required): training FLOPs of the run in the study's convention (6ND or exact).
- `params` (required): N, trainable parameters.
- `loss` (required): final smoothed training loss (or validation loss), > 0.
- `tokens` (optional): D, training tokens; empty or absent means compute / (6 params).
- `fid` (optional): FID at the end of training; empty means not measured.
- `budget` (optional): the isoFLOP budget the run belongs to, FLOPs; empty or absent means the run's
  own `compute`, rounded to 6 significant digits, so runs of one budget group together.
- `trial`, `status` (optional): text metadata written by the service, carried through untouched.

Every problem raises `RunsTableError`, whose message names the file, the column, the data rows
(counted from 1, header excluded) or the budget at fault: a cell that is not a number is named by
its row, as a bad value is. Rows that repeat another's budget, size and loss exactly are kept here
and reported by `scaling.laws.fit_laws`, which counts them once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REQUIRED = ("compute", "params", "loss")
NUMERIC = ("compute", "params", "tokens", "loss", "fid", "budget")
TEXT = ("trial", "status")
MIN_SIZES = 3  # an isoFLOP parabola needs three distinct sizes


class RunsTableError(ValueError):
    """A runs table that cannot be read or fitted; the message names the file, column, rows or
    budget at fault."""


@dataclass(frozen=True)
class RunPoint:
    """One trial: compute (FLOPs), params N, loss, tokens D (default compute / (6 N)), FID."""

    compute: float
    params: float
    loss: float
    tokens: float | None = None
    fid: float | None = None
    budget: float | None = None
    trial: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if self.tokens is None and _positive(self.compute) and _positive(self.params):
            object.__setattr__(self, "tokens", self.compute / (6 * self.params))
        for name in ("compute", "params", "loss", "tokens", "fid", "budget"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise RunsTableError(f"RunPoint.{name}={value} must be positive and finite")

    @property
    def group(self) -> float:
        """The isoFLOP budget this run belongs to, FLOPs."""
        return self.budget if self.budget is not None else float(f"{self.compute:.6g}")


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:10])
    return shown + (f" and {rows.size - 10} more" if rows.size > 10 else "")


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise RunsTableError(f"runs table {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pacsv.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise RunsTableError(f"cannot read runs table {path}: {err}") from err
    raise RunsTableError(f"runs table {path}: unknown suffix {suffix!r}; use .csv or .parquet")


def _numeric(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """The column as float64 with nulls as NaN."""
    column = table.column(name)
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _parse_text(column.to_pylist(), name, path)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise RunsTableError(f"runs table {path}: column {name!r} is not numeric ({column.type})")
    # safe=False: integers beyond 2^53 (compute of 1e17 FLOPs) round to the nearest float.
    return column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(float)


def _parse_text(cells: list[str | None], name: str, path: Path) -> np.ndarray:
    """A text column (a CSV column with a stray word in it) as float64, empty cells as NaN; the
    cells that are not numbers are named by their data rows."""
    values = np.full(len(cells), np.nan)
    bad = np.zeros(len(cells), bool)
    for i, cell in enumerate(cells):
        if cell is None or not cell.strip():
            continue
        try:
            values[i] = float(cell)
        except ValueError:
            bad[i] = True
    if bad.any():
        shown = ", ".join(repr(cells[i]) for i in np.flatnonzero(bad)[:3])
        raise RunsTableError(f"runs table {path}: column {name!r} is not numeric: cells that are "
                             f"not numbers ({shown}) in data rows {_rows(bad)}")
    return values


def read_runs(path: str | Path, min_sizes: int = MIN_SIZES) -> list[RunPoint]:
    """Read and validate a CSV or Parquet runs table.

    Checks: the file is readable; `compute`, `params`, `loss` exist; every given number is positive
    and finite; each budget has at least `min_sizes` distinct sizes (0 skips that check).
    """
    path = Path(path)
    table = _read_table(path)
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise RunsTableError(
            f"runs table {path}: missing column(s) {', '.join(repr(m) for m in missing)}; "
            f"it has {', '.join(table.column_names) or 'no columns'}"
        )
    if table.num_rows == 0:
        raise RunsTableError(f"runs table {path} has no rows")
    columns: dict[str, np.ndarray] = {}
    for name in NUMERIC:
        if name not in table.column_names:
            continue
        values = _numeric(table, name, path)
        # Required columns must be present everywhere; optional ones may be empty (null).
        given = np.ones_like(values, bool) if name in REQUIRED else ~np.isnan(values)
        bad = given & ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise RunsTableError(
                f"runs table {path}: column {name!r} must be positive and finite; "
                f"bad values in data rows {_rows(bad)}"
            )
        columns[name] = values
    text = {
        name: [None if v in (None, "") else str(v) for v in table.column(name).to_pylist()]
        for name in TEXT
        if name in table.column_names
    }

    def opt(name: str, i: int) -> float | None:
        values = columns.get(name)
        return None if values is None or np.isnan(values[i]) else float(values[i])

    points = [
        RunPoint(
            compute=float(columns["compute"][i]),
            params=float(columns["params"][i]),
            loss=float(columns["loss"][i]),
            tokens=opt("tokens", i),
            fid=opt("fid", i),
            budget=opt("budget", i),
            trial=text["trial"][i] if "trial" in text else None,
            status=text["status"][i] if "status" in text else None,
        )
        for i in range(table.num_rows)
    ]
    if min_sizes:
        group_by_budget(points, min_sizes, source=str(path))
    return points


def group_by_budget(
    points: Iterable[RunPoint], min_sizes: int = MIN_SIZES, source: str = "runs"
) -> dict[float, list[RunPoint]]:
    """Runs grouped by isoFLOP budget (FLOPs), budgets ascending; each needs `min_sizes` sizes."""
    groups: dict[float, list[RunPoint]] = {}
    for point in points:
        groups.setdefault(point.group, []).append(point)
    if not groups:
        raise RunsTableError(f"{source}: no runs")
    for budget, members in groups.items():
        sizes = sorted({p.params for p in members})
        if len(sizes) < min_sizes:
            shown = ", ".join(f"{n:.3g}" for n in sizes)
            raise RunsTableError(
                f"{source}: budget {budget:.3g} FLOPs has {len(sizes)} distinct size(s) ({shown} "
                f"parameters); an isoFLOP fit needs at least {min_sizes}"
            )
    return dict(sorted(groups.items()))


def write_runs(points: Sequence[RunPoint], path: str | Path) -> Path:
    """Write runs as Parquet (.parquet, .pq) or CSV (.csv) by the suffix; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise RunsTableError(f"runs table {path}: unknown suffix {suffix!r}; use .csv or .parquet")
    data = {name: [getattr(p, name) for p in points] for name in NUMERIC + TEXT}
    schema = pa.schema(
        [(name, pa.float64()) for name in NUMERIC] + [(name, pa.string()) for name in TEXT]
    )
    table = pa.Table.from_pydict(data, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return path
