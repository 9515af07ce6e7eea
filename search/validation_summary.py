"""A validation's verdict as text, and where it is stored; light enough for `laws`, which
imports neither Ray nor torch."""

from __future__ import annotations

VALIDATION_TAG = "dit.validation"  # JSON summary, on the validation run
LAST_VALIDATION_TAG = "dit.last_validation"  # the same, on the study run, for `laws`


def _band(s: dict, key: str) -> tuple[str, str]:
    """The 95% interval of prediction `key` as text (and of one run's loss, when the summary
    holds it), and whether the measured loss lies in the interval of one run (else of the
    expected loss); both empty when the summary holds no interval."""
    lo, hi = s.get(f"{key}_lo"), s.get(f"{key}_hi")
    if lo is None or hi is None:
        return "", ""
    text = f" [{lo:.4g}, {hi:.4g}]"
    run_lo, run_hi = s.get(f"{key}_run_lo"), s.get(f"{key}_run_hi")
    which = "the interval"
    if run_lo is not None and run_hi is not None:
        text += f", one run [{run_lo:.4g}, {run_hi:.4g}]"
        lo, hi, which = run_lo, run_hi, "one run's interval"
    inside = "" if "measured_loss" not in s else (
        f", inside {which}" if lo <= s["measured_loss"] <= hi else f", outside {which}")
    return text, inside


def summary_text(s: dict) -> str:
    """The validation's verdict for people: predicted against measured, and how far out."""
    ci, inside = _band(s, "predicted_loss")
    lines = [f"validation at C = {s['budget']:.3g} FLOPs ({s['decades']:.2f} decades above the "
             f"fitted budgets), {s['metric']}:"]
    if "measured_loss" in s:
        lines.append(f"  predicted {s['predicted_loss']:.4g}{ci}, measured "
                     f"{s['measured_loss']:.4g} at N = {s['params']:.3g} ({s['loss_error']:+.1%}"
                     f"{inside})")
        if "approach3_loss" in s:
            band, inside = _band(s, "approach3_loss")
            lines.append(f"  Approach 3's L(N, D) at that N and D = {s['tokens']:.3g} tokens: "
                         f"predicted {s['approach3_loss']:.4g}{band} "
                         f"({s['approach3_error']:+.1%}{inside})")
    else:
        lines.append(f"  predicted {s['predicted_loss']:.4g}{ci}; the trial at N_opt did not "
                     "finish, nothing measured")
    if "measured_n_opt" in s:
        lo, hi = s.get("predicted_n_opt_lo"), s.get("predicted_n_opt_hi")
        text = f"  predicted N_opt {s['predicted_n_opt']:.3g}" + (
            f" [{lo:.3g}, {hi:.3g}]" if lo is not None else "")
        which = "the interval"
        if s.get("measured_n_opt_run_lo") is not None:
            text += (f"; if it holds, three runs' vertex falls in [{s['measured_n_opt_run_lo']:.3g}"
                     f", {s['measured_n_opt_run_hi']:.3g}] (no minimum in "
                     f"{s['no_minimum_share']:.0%} of draws)")
            which = "that range"
        if s["measured_n_opt"] is None:
            lines.append(text + "; the three sizes show no minimum between them")
        else:
            where = (f", inside {which}" if s.get("n_opt_in_interval") else f", outside {which}"
                     if "n_opt_in_interval" in s else "")
            lines.append(text + f"; measured vertex N = {s['measured_n_opt']:.3g}{where}")
    return "\n".join(lines)
