"""Evaluation results as files: a JSON document and a PNG chart of quality and latency (and of
the answers, when they were evaluated)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from app.eval.answers import AnswerResult
from app.eval.runner import EvalReport

QUALITY = (
    ("ndcg_10", "nDCG@10"),
    ("recall_100", "R@100"),
    ("mrr_10", "MRR@10"),
    ("hit_5", "hit@5"),
)
ANSWERS = (
    ("citation_precision", "citation\nprecision"),
    ("citation_recall", "citation\nrecall"),
    ("support", "support"),
)


def write(report: EvalReport, out_dir: Path) -> tuple[Path, Path]:
    """Write `<dataset>.json` and `<dataset>.png` into `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{report.dataset}.json"
    json_path.write_text(report.to_json() + "\n")
    png_path = out_dir / f"{report.dataset}.png"
    chart(report, png_path)
    return json_path, png_path


def chart(report: EvalReport, path: Path) -> None:
    """Grouped bars of each metric per mode, latency p50/p95 per mode, and the answer
    metrics."""
    ratios = [3, 1.3] + ([1.3] if report.answers else [])
    fig, axes = plt.subplots(
        1, len(ratios), figsize=(14.5 if report.answers else 11, 4),
        gridspec_kw={"width_ratios": ratios},
    )  # fmt: skip
    quality, latency = axes[0], axes[1]
    width = 0.8 / max(len(report.modes), 1)
    for i, mode in enumerate(report.modes):
        values = [getattr(mode, key) for key, _ in QUALITY]
        positions = [x + i * width for x in range(len(QUALITY))]
        bars = quality.bar(positions, values, width, label=mode.mode)
        quality.bar_label(bars, fmt="%.3f", fontsize=7)
    quality.set_xticks([x + width * (len(report.modes) - 1) / 2 for x in range(len(QUALITY))])
    quality.set_xticklabels([label for _, label in QUALITY])
    quality.set_ylim(0, 1.05)
    quality.set_title(f"{report.dataset}: {report.queries} queries, {report.documents} documents")
    quality.legend(loc="upper left", fontsize=8)
    names = [m.mode for m in report.modes]
    latency.bar(names, [m.latency_p95_ms for m in report.modes], color="#c7d7ea", label="p95")
    latency.bar(names, [m.latency_p50_ms for m in report.modes], color="#3a6ea5", label="p50")
    latency.set_ylabel("ms per search (query embedding excluded)")
    latency.set_title("latency")
    latency.legend(fontsize=8)
    if report.answers:
        _answers(axes[2], report.answers)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _answers(axes: Axes, answers: AnswerResult) -> None:
    """The answer metrics' means (a metric defined for no answer shows no bar)."""
    values = [getattr(answers, key) for key, _ in ANSWERS]
    bars = axes.bar([label for _, label in ANSWERS], [v or 0.0 for v in values], color="#6a9a5b")
    axes.bar_label(bars, labels=["-" if v is None else f"{v:.3f}" for v in values], fontsize=7)
    axes.set_ylim(0, 1.05)
    axes.set_title(f"answers: {answers.answered} of {answers.queries} given")
    axes.tick_params(axis="x", labelsize=8)
