"""Scoring of one method on one case of the hard-posterior suite, against the case's reference.

The bar (issue 11): every posterior mean within 0.2 reference sd, every sd ratio in [0.8, 1.25],
``|log Z - log Z_ref| <= max(4 SE, 0.05)`` (SE: the method's own, combined with the reference's).
A case that misses it *passes honestly* only if the result carries a warning; otherwise the miss is
silent, the one outcome the suite exists to catch.
"""

from __future__ import annotations

import math

MEAN_TOL, SD_LOW, SD_HIGH, LOG_Z_FLOOR = 0.2, 0.8, 1.25, 0.05


def score(
    reference: dict,
    mean: list[float] | None,
    sd: list[float] | None,
    log_z: float | None = None,
    log_z_se: float | None = None,
) -> dict:
    """Errors and pass flags: ``mean_err`` (max over coordinates of ``|mean - ref| / ref_sd``),
    ``sd_ratio_min/max``, ``log_z_err`` (signed), ``moments_ok``, ``log_z_ok`` (``None`` when the
    method has no log Z), ``ok`` (every available check passes)."""
    out: dict = {
        "mean_err": None,
        "sd_ratio_min": None,
        "sd_ratio_max": None,
        "log_z_err": None,
        "moments_ok": None,
        "log_z_ok": None,
        "ok": False,
    }
    if mean is not None and sd is not None and all(map(math.isfinite, mean + sd)):
        ref_m, ref_s = reference["mean"], reference["sd"]
        errs = [abs(m - r) / s for m, r, s in zip(mean, ref_m, ref_s)]
        ratios = [a / s for a, s in zip(sd, ref_s)]
        out.update(
            mean_err=max(errs),
            sd_ratio_min=min(ratios),
            sd_ratio_max=max(ratios),
            worst=reference.get("names", [None] * len(errs))[errs.index(max(errs))]
            if reference.get("names")
            else None,
        )
        out["moments_ok"] = (
            out["mean_err"] <= MEAN_TOL and SD_LOW <= out["sd_ratio_min"] and out["sd_ratio_max"] <= SD_HIGH
        )
    if log_z is not None and math.isfinite(log_z):
        err = log_z - reference["log_z"]
        se = math.hypot(log_z_se or 0.0, reference.get("log_z_se") or 0.0)
        out.update(log_z_err=err, log_z_ok=abs(err) <= max(4 * se, LOG_Z_FLOOR))
    checks = [v for v in (out["moments_ok"], out["log_z_ok"]) if v is not None]
    out["ok"] = bool(checks) and all(checks) and out["moments_ok"] is not None
    return out


def verdict(scored: dict, warnings: list[str]) -> str:
    """``"pass"``, ``"miss, warned"`` or ``"MISS, SILENT"``."""
    if scored["ok"]:
        return "pass" if not warnings else "pass (warned)"
    return "miss, warned" if warnings else "MISS, SILENT"
