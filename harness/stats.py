"""Statistics of the result tables: seed summaries, t confidence intervals, Welch tests, Holm correction, verdicts.

Everything here is scipy plus arithmetic; `results/README.md` states the rules in words.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = [
    "Summary",
    "summarize",
    "welch_p",
    "welch_detectable",
    "holm",
    "verdict",
    "VERDICTS",
    "claim_verdict",
    "CLAIM_VERDICTS",
]

VERDICTS = ("reproduced", "within noise", "below", "above", "not run", "no paper value")
CLAIM_VERDICTS = ("direction reproduced", "contradicted", "inconclusive", "not run")


@dataclass(frozen=True)
class Summary:
    """Seeds of one table cell: n, mean, sample std (ddof=1) and the two-sided 95% t interval of the mean."""

    n: int
    mean: float
    std: float
    ci_lo: float
    ci_hi: float

    def fmt(self, digits: int = 2) -> str:
        """'mean ± std' (or the single value, or '—')."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def fmt_ci(self, digits: int = 2) -> str:
        """'[lo, hi]' or '—' when there are fewer than 2 seeds."""
        return "—" if self.n < 2 else f"[{self.ci_lo:.{digits}f}, {self.ci_hi:.{digits}f}]"


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and the t confidence interval of the mean over seeds (NaN where undefined)."""
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of a vs b; NaN with fewer than 2 values on a side or no variance at all."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return p


def welch_detectable(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> float:
    """The smallest |mean(a) - mean(b)| that a two-sided Welch t-test at level `alpha` (uncorrected) calls
    significant, given these samples' sizes and standard deviations: t_{1-alpha/2, df} * sqrt(s_a^2/n_a + s_b^2/n_b),
    df by Welch-Satterthwaite. What a claim's seeds can resolve; NaN with fewer than 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0:
        return 0.0
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs are kept and not counted."""
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(paper: float | None, s: Summary, tolerance: float = 0.5) -> str:
    """Compare our seeds with the paper's number (percentage points).

    - "not run": no seeds. "no paper value": nothing to compare with.
    - n >= 2: the paper value inside our 95% CI -> "reproduced" when |mean - paper| <= tolerance, else "within noise";
      the CI entirely below the paper -> "below"; entirely above -> "above".
    - n == 1 (no interval): "reproduced" when |value - paper| <= tolerance, else "below"/"above".
    """
    if s.n == 0:
        return "not run"
    if paper is None:
        return "no paper value"
    delta = s.mean - paper
    if s.n >= 2 and s.ci_lo <= paper <= s.ci_hi:
        return "reproduced" if abs(delta) <= tolerance else "within noise"
    if s.n == 1 and abs(delta) <= tolerance:
        return "reproduced"
    return "below" if delta < 0 else "above"


def claim_verdict(delta: float, p_adjusted: float, expected_sign: int = 1, alpha: float = 0.05) -> str:
    """The verdict on a directional claim "A > B" (expected_sign +1) or "A < B" (-1) from our seeds.

    - "not run": no difference could be measured (a side without runs; `delta` NaN).
    - "direction reproduced": our difference A - B has the claimed sign and the (Holm-adjusted) p < alpha.
    - "contradicted": the opposite sign with p < alpha.
    - "inconclusive": otherwise (p >= alpha, or no p-value: fewer than 2 seeds on a side).
    """
    if math.isnan(delta):
        return "not run"
    if math.isnan(p_adjusted) or p_adjusted >= alpha or delta == 0:
        return "inconclusive"
    return "direction reproduced" if (delta > 0) == (expected_sign > 0) else "contradicted"
