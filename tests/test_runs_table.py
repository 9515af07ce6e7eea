import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaling.runs_table import RunPoint, RunsTableError, group_by_budget, read_runs, write_runs


def study() -> list[RunPoint]:
    points = []
    for c in (1e17, 1e18):
        for i, n in enumerate((1e6, 2e6, 4e6, 8e6)):
            points.append(RunPoint(c, n, 1.0 + 0.01 * i, fid=50.0 + i if i % 2 else None,
                                   trial=f"t{c:.0e}-{i}", status="finished"))
    return points


def write_csv(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    points = study()
    path = write_runs(points, tmp_path / f"runs{suffix}")
    assert read_runs(path) == points


def test_tokens_default_to_6nd_and_budget_groups():
    p = RunPoint(6e18, 1e8, 2.0)
    assert p.tokens == pytest.approx(1e10)
    assert p.group == 6e18
    assert RunPoint(6.0000001e18, 1e8, 2.0).group == 6e18  # rounded to 6 significant digits
    assert RunPoint(6.3e18, 1e8, 2.0, budget=6e18).group == 6e18


def test_optional_columns_may_be_absent_or_empty(tmp_path):
    path = write_csv(tmp_path / "r.csv",
                     "compute,params,loss,fid,tokens\n"
                     "1e17,1e6,1.1,,\n1e17,2e6,1.0,40,3e9\n1e17,4e6,1.05,,\n")
    points = read_runs(path)
    assert [p.fid for p in points] == [None, 40.0, None]
    assert points[0].tokens == pytest.approx(1e17 / 6e6)
    assert points[1].tokens == 3e9
    assert all(p.budget is None and p.trial is None for p in points)


def test_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path / "r.csv", "compute,loss\n1e17,1.0\n")
    with pytest.raises(RunsTableError, match="missing column.*'params'"):
        read_runs(path)


@pytest.mark.parametrize(
    ("body", "column", "rows"),
    [
        ("1e17,1e6,1.0\n1e17,2e6,-1\n1e17,4e6,0\n", "loss", "2, 3"),
        ("1e17,1e6,1.0\n1e17,nan,1.0\n1e17,4e6,1.0\n", "params", "2"),
        ("inf,1e6,1.0\n1e17,2e6,1.0\n1e17,4e6,1.0\n", "compute", "1"),
        ("1e17,1e6,1.0\n1e17,2e6,\n1e17,4e6,1.0\n", "loss", "2"),
    ],
)
def test_bad_values_name_column_and_rows(tmp_path, body, column, rows):
    path = write_csv(tmp_path / "r.csv", "compute,params,loss\n" + body)
    with pytest.raises(RunsTableError, match=rf"column '{column}'.*data rows {rows}$"):
        read_runs(path)


def test_bad_optional_value_is_caught(tmp_path):
    path = write_csv(tmp_path / "r.csv",
                     "compute,params,loss,fid\n1e17,1e6,1,3\n1e17,2e6,1,-2\n1e17,4e6,1,\n")
    with pytest.raises(RunsTableError, match=r"column 'fid'.*data rows 2$"):
        read_runs(path)


def test_non_numeric_column(tmp_path):
    path = write_csv(tmp_path / "r.csv", "compute,params,loss\n1e17,1e6,low\n")
    with pytest.raises(RunsTableError, match="column 'loss' is not numeric"):
        read_runs(path)


def test_non_numeric_cell_is_named_by_its_row(tmp_path):
    path = write_csv(tmp_path / "r.csv", "compute,params,loss\n1e17,1e6,1.0\n1e17,2e6,0.9\n"
                     "1e17,4e6,diverged\n1e17,8e6,1.1\n")
    with pytest.raises(RunsTableError,
                       match=r"column 'loss' is not numeric: .*'diverged'.* data rows 3$"):
        read_runs(path)
    path = write_csv(tmp_path / "o.csv", "compute,params,loss,fid\n1e17,1e6,1,3\n"
                     "1e17,2e6,1,x\n1e17,4e6,1,\n")
    with pytest.raises(RunsTableError, match=r"column 'fid' is not numeric: .* data rows 2$"):
        read_runs(path)


def test_duplicate_runs_are_reported_and_counted_once():
    import numpy as np

    from scaling.laws import FitOptions, fit_laws
    from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study

    points = synthetic_study(SURFACES["chinchilla"], PAPER_BUDGETS, np.random.default_rng(0),
                             sizes=5)
    options = FitOptions(draws=100, approach3=False)
    once = fit_laws(points, options)
    twice = fit_laws(points + points[:5], options)  # budget 1e17's five rows again
    (note,) = [w for w in twice.warnings if "counted once" in w]
    assert note.startswith("5 run(s) repeat another run's budget, size and loss")
    assert "31 (= 1)" in note
    assert twice.n_opt.exponent_ci == once.n_opt.exponent_ci
    assert twice.budgets[0].points == 5


def test_budget_with_too_few_sizes_is_named(tmp_path):
    path = write_csv(tmp_path / "r.csv",
                     "compute,params,loss\n"
                     "1e17,1e6,1\n1e17,2e6,1\n1e17,4e6,1\n"
                     "1e18,1e7,1\n1e18,2e7,1\n1e18,2e7,1.01\n")
    with pytest.raises(RunsTableError, match=r"budget 1e\+18 FLOPs has 2 distinct size"):
        read_runs(path)
    assert len(read_runs(path, min_sizes=0)) == 6


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(RunsTableError, match="does not exist"):
        read_runs(tmp_path / "absent.csv")
    garbage = tmp_path / "runs.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(RunsTableError, match=rf"cannot read runs table {garbage}"):
        read_runs(garbage)
    other = tmp_path / "runs.xlsx"
    other.write_text("x")
    with pytest.raises(RunsTableError, match="unknown suffix '.xlsx'"):
        read_runs(other)
    empty = write_csv(tmp_path / "empty.csv", "compute,params,loss\n")
    with pytest.raises(RunsTableError, match="has no rows"):
        read_runs(empty)
    with pytest.raises(RunsTableError, match="unknown suffix"):
        write_runs(study(), tmp_path / "runs.txt")


def test_parquet_with_integer_columns(tmp_path):
    table = pa.table({"compute": [10**17] * 3, "params": [10**6, 2 * 10**6, 4 * 10**6],
                      "loss": [1.2, 1.1, 1.15]})
    pq.write_table(table, tmp_path / "r.parquet")
    points = read_runs(tmp_path / "r.parquet")
    assert points[1].params == 2e6 and isinstance(points[1].params, float)


def test_group_by_budget_orders_budgets():
    groups = group_by_budget(list(reversed(study())))
    assert list(groups) == [1e17, 1e18]
    assert all(len(v) == 4 for v in groups.values())
    with pytest.raises(RunsTableError, match="no runs"):
        group_by_budget([])


def test_runpoint_validation_names_the_field():
    with pytest.raises(RunsTableError, match="RunPoint.loss"):
        RunPoint(1e17, 1e6, -1.0)
    with pytest.raises(RunsTableError, match="RunPoint.fid"):
        RunPoint(1e17, 1e6, 1.0, fid=math.inf)
