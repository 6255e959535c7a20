"""Parameter-count metrics shared by the kinds that compress (from a compression report's `params`)."""

from __future__ import annotations

PARAM_METRICS = ("params_total", "params_active", "teacher_params_total", "teacher_params_active")


def param_metrics(params: dict[str, dict[str, int]]) -> dict[str, float]:
    """{"teacher": ParamCount dict, "student": ParamCount dict} -> flat metrics."""
    return {
        "params_total": float(params["student"]["total"]),
        "params_active": float(params["student"]["active"]),
        "teacher_params_total": float(params["teacher"]["total"]),
        "teacher_params_active": float(params["teacher"]["active"]),
    }
