"""A validation's verdict as text, and where it is stored; light enough for `laws`, which
imports neither Ray nor torch."""

from __future__ import annotations

VALIDATION_TAG = "dit.validation"  # JSON summary, on the validation run
LAST_VALIDATION_TAG = "dit.last_validation"  # the same, on the study run, for `laws`


def summary_text(s: dict) -> str:
    """The validation's verdict for people: predicted against measured, and how far out."""
    ci = (f" [{s['predicted_loss_lo']:.4g}, {s['predicted_loss_hi']:.4g}]"
          if "predicted_loss_lo" in s else "")
    lines = [f"validation at C = {s['budget']:.3g} FLOPs ({s['decades']:.2f} decades above the "
             f"fitted budgets), {s['metric']}:"]
    if "measured_loss" in s:
        inside = ""
        if ci:
            ok = s["predicted_loss_lo"] <= s["measured_loss"] <= s["predicted_loss_hi"]
            inside = ", inside the interval" if ok else ", outside the interval"
        lines.append(f"  predicted {s['predicted_loss']:.4g}{ci}, measured "
                     f"{s['measured_loss']:.4g} at N = {s['params']:.3g} ({s['loss_error']:+.1%}"
                     f"{inside})")
        if "approach3_loss" in s:
            lo, hi = s.get("approach3_loss_lo"), s.get("approach3_loss_hi")
            band, inside = "", ""
            if lo is not None:
                band = f" [{lo:.4g}, {hi:.4g}]"
                inside = (", inside the interval" if lo <= s["measured_loss"] <= hi
                          else ", outside the interval")
            lines.append(f"  Approach 3's L(N, D) at that N and D = {s['tokens']:.3g} tokens: "
                         f"predicted {s['approach3_loss']:.4g}{band} "
                         f"({s['approach3_error']:+.1%}{inside})")
    else:
        lines.append(f"  predicted {s['predicted_loss']:.4g}{ci}; the trial at N_opt did not "
                     "finish, nothing measured")
    if "measured_n_opt" in s:
        if s["measured_n_opt"] is None:
            lines.append("  measured optimum: the three sizes show no minimum between them")
        else:
            where = ("inside" if s.get("n_opt_in_interval") else "outside"
                     if "n_opt_in_interval" in s else "compared with")
            lo, hi = s.get("predicted_n_opt_lo"), s.get("predicted_n_opt_hi")
            band = f" [{lo:.3g}, {hi:.3g}]" if lo is not None else ""
            lines.append(f"  measured optimum N = {s['measured_n_opt']:.3g}, {where} the "
                         f"predicted N_opt {s['predicted_n_opt']:.3g}{band}")
    return "\n".join(lines)
