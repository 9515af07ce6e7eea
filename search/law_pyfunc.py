"""A fitted law as an MLflow pyfunc model ("models from code": MLflow loads this file).

Input: a table with a `budget` column, compute in FLOPs (a multiply-add = 2 FLOPs, in the law's
convention). Output: one row per budget with N_opt (parameters), D_opt (tokens), the loss at the
optimum and, when the study measured it, FID, each with its 95% interval (`_lo`, `_hi`), and how
many decades the budget lies outside the fitted ones. The law itself is the model's `laws`
artifact (the study's `laws.json`); the `scaling` package travels with the model as code, so
`mlflow.pyfunc.load_model("models:/dit-scaling-STUDY/3")` answers in any notebook.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd


def prediction_row(prediction) -> dict[str, float | None]:
    """A `scaling.laws.result.Prediction` as one flat row (None where there is no value)."""
    row: dict[str, float | None] = {"budget": prediction.compute}
    for name in ("n_opt", "d_opt", "loss", "fid"):
        estimate = getattr(prediction, name)
        row[name] = None if estimate is None else estimate.value
        ci = None if estimate is None else estimate.ci
        row[f"{name}_lo"], row[f"{name}_hi"] = (None, None) if ci is None else ci
    row["extrapolation_decades"] = prediction.extrapolation_decades
    return row


class LawModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from scaling.laws.result import LawFit

        self.fit = LawFit.from_json(Path(context.artifacts["laws"]).read_text())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            if "budget" not in model_input.columns:
                raise ValueError("the input table needs a 'budget' column (FLOPs)")
            budgets = model_input["budget"].tolist()
        else:
            budgets = list(model_input)
        return pd.DataFrame([prediction_row(self.fit.predict(float(c))) for c in budgets])


mlflow.models.set_model(LawModel())
