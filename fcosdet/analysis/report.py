"""`report.html` of a run folder: one self-contained page (images inline as base64), offline.

It reads what the run wrote: log.jsonl (loss terms, lr, images/s per logged iteration and the
validation rows), metrics.json (the last evaluation), config.yaml (the resolved config) and
diagnostics/ (PR curves, confusion matrix, ground truth | detections pictures), which
`update_run_report` writes from the evaluator at each evaluation.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from fcosdet.analysis.diagnostics import write_diagnostics
from fcosdet.analysis.viz import is_number, read_log, training_figure

SAMPLES = 4  # validation images drawn ground truth | detections
# Marks the page for the browser test: all images decoded, no script error.
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => { window.__errors.push(String(e.message || e)); });
function __check() {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-images', bad ? 'broken ' + bad : 'ok ' + imgs.length);
  document.body.setAttribute('data-errors', String(window.__errors.length));
}
window.addEventListener('load', __check);
</script>"""


def _rows(log_jsonl: Path) -> list[dict[str, Any]]:
    return read_log(log_jsonl) if log_jsonl.is_file() else []


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def training_plots(rows: list[dict[str, Any]]) -> bytes | None:
    """Loss terms and lr over iterations, AP over epochs (`training_figure`), as one PNG (None
    before any log)."""
    if not any(is_number(r.get("iter")) or is_number(r.get("AP")) for r in rows):
        return None
    return _png(training_figure(rows, lr=True, panel_size=(5.0, 3.6)))


def _img(data: bytes, mime: str, alt: str, width: str = "100%") -> str:
    return (f'<img alt="{html.escape(alt)}" style="max-width:{width}" '
            f'src="data:{mime};base64,{base64.b64encode(data).decode()}">')


def _file_img(path: Path, alt: str, width: str = "100%") -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return _img(path.read_bytes(), mime, alt, width)


def _metrics_html(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100") if k in metrics]
    sizes = metrics.get("boxes_by_size") or {}
    empty = {"APs": "small", "APm": "medium", "APl": "large"}

    def cell(k: str) -> str:
        return "n/a" if k in empty and sizes.get(empty[k]) == 0 else f"{float(metrics[k]):.3f}"

    out = ["<table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr><tr>"
           + "".join(f"<td>{cell(k)}</td>" for k in keys) + "</tr></table>"]
    if "images" in metrics:
        out.append(f"<p>{metrics['images']} images, {metrics['boxes']} boxes evaluated.</p>")
    per_class = metrics.get("per_class") or {}
    if per_class:
        out.append("<table><tr><th>class</th><th>AP</th></tr>" + "".join(
            f"<tr><td>{html.escape(n)}</td><td>{'n/a' if v is None else f'{v:.3f}'}</td></tr>"
            for n, v in per_class.items()) + "</table>")
    return "\n".join(out)


def _timing_html(rows: list[dict[str, Any]]) -> str:
    speeds = [r["images_per_s"] for r in rows if is_number(r.get("images_per_s"))]
    if not speeds:
        return "<p>no training iterations logged yet</p>"
    last = max((r for r in rows if is_number(r.get("iter"))), key=lambda r: r["iter"])
    return (f"<p>{last['iter']} iterations logged; training speed {speeds[-1]:.2f} images/s at the last "
            f"log (range {min(speeds):.2f}-{max(speeds):.2f}).</p>")


def render(run_dir: Path) -> str:
    """The page's HTML from the files in `run_dir`."""
    rows = _rows(run_dir / "log.jsonl")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    diag = run_dir / "diagnostics"
    parts = [f"<h1>fcosdet run {html.escape(run_dir.name)}</h1>", "<h2>Training</h2>", _timing_html(rows)]
    plots = training_plots(rows)
    parts.append(_img(plots, "image/png", "loss, lr and AP curves") if plots else "<p>no curves yet</p>")
    parts += ["<h2>Last evaluation</h2>", _metrics_html(metrics) if metrics else "<p>not evaluated yet</p>"]
    figures = [(diag / "pr_curves.png", "precision-recall curves"), (diag / "confusion_matrix.png", "confusion matrix")]
    parts.append('<div class="row">' + "".join(f"<div>{_file_img(p, alt, '640px')}</div>"
                                                for p, alt in figures if p.is_file()) + "</div>")
    for folder, title in (("samples", "Sample images: ground truth | detections"),
                          ("worst", "Worst images (most missed, false or confused boxes): ground truth | detections")):
        pictures = sorted((diag / folder).glob("*.jpg"))
        if pictures:
            parts.append(f"<h2>{title}</h2><div class=\"row\">" + "".join(
                f"<figure>{_file_img(p, p.stem, '620px')}<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                for p in pictures) + "</div>")
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(config.read_text())}</pre>")
    style = ("body{font-family:sans-serif;margin:24px;max-width:1400px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.row{display:flex;flex-wrap:wrap;gap:12px}"
             "pre{background:#f5f5f5;padding:8px;font-size:12px}figure{margin:8px 0}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fcosdet report</title>"
            f"<style>{style}</style>{CHECK_SCRIPT}</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def update_run_report(run_dir: Path, *, evaluator: Any | None = None) -> Path:
    """Rewrite run_dir/report.html; with an evaluator (after `evaluate()`) first refresh
    run_dir/diagnostics (confusion matrix, PR curves, worst and sample images)."""
    if evaluator is not None:
        write_diagnostics(evaluator, run_dir / "diagnostics", samples=SAMPLES)
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(run_dir))
    tmp.replace(path)  # a reader never sees half a page
    return path
