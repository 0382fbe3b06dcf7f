"""`report.html` of a run folder: one self-contained page (images inline as base64), offline.

It reads what the run wrote: run.json (dates, wall time, epochs and iterations run of planned,
why it stopped, device, dataset splits with their files and image / box counts, classes,
checkpoint paths; written by `fcosdet train` when training stops), log.jsonl (loss terms, lr,
images/s per logged iteration and the validation rows), metrics.json (the last evaluation),
config.yaml (the resolved config) and diagnostics/ (PR curves, confusion matrix, ground truth |
detections pictures), which `update_run_report` writes from the evaluator at each evaluation.
Without run.json (a run still going, or one from before it existed) the page shows what
config.yaml, log.jsonl and metrics.json tell and says the rest is unknown.
"""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

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


UNKNOWN = "unknown"


def read_run_info(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """(run_dir/run.json as a dict, "") or (None, why there is none). Schema: started /
    finished (ISO 8601), wall_seconds, epochs_planned / epochs_run, iterations_planned /
    iterations_run, stopped ("completed", "max_iters", "interrupted (SIGINT)", ...), device,
    dataset {path, classes, splits {name: {source, images, boxes}}}, checkpoints {last, best}
    (paths or null)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None, ("no run.json: fcosdet train writes it when training stops (this run is still going, "
                      "or is from before it did)")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"run.json is unreadable ({exc})"
    return (info, "") if isinstance(info, dict) else (None, "run.json does not hold an object")


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


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


def _duration(seconds: Any) -> str:
    """123.4 -> "2 min 03 s (123.4 s)"."""
    if not is_number(seconds):
        return UNKNOWN
    whole = int(seconds)
    h, m, sec = whole // 3600, whole // 60 % 60, whole % 60
    text = f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{seconds:.1f} s")
    return f"{text} ({seconds:.1f} s)" if h or m else text


def _of(run: Any, planned: Any) -> str:
    """"3 of 12 planned", with "unknown" for a missing side."""
    return f"{run if run is not None else UNKNOWN} of {planned if planned is not None else UNKNOWN} planned"


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    return ('<table class="kv">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                           for k, v in pairs) + "</table>")


def _fallback_info(run_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """What config.yaml, log.jsonl, metrics.json and the checkpoint files say, in run.json's shape
    (None where they do not say)."""
    cfg = _read_config(run_dir)
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    logged = [r for r in rows if is_number(r.get("iter"))]
    return {"epochs_planned": train.get("epochs"), "iterations_planned": train.get("max_iters"),
            "epochs_run": max((r["epoch"] for r in logged if is_number(r.get("epoch"))), default=None),
            "iterations_run": max((r["iter"] for r in logged), default=None),
            "dataset": {"path": data.get("dataset"), "classes": list(metrics.get("per_class") or {}) or None,
                        "splits": {}},
            "checkpoints": {n: str(run_dir / f"{n}.pt") if (run_dir / f"{n}.pt").is_file() else None
                            for n in ("last", "best")}}


def _run_pairs(info: dict[str, Any], complete: bool) -> list[tuple[str, Any]]:
    """The run table's rows; `complete` when `info` is run.json (else unknown fields say so)."""
    missing = UNKNOWN if not complete else "not recorded"
    checkpoints = info.get("checkpoints") or {}
    planned_iters = info.get("iterations_planned")
    return [("started", info.get("started") or missing), ("finished", info.get("finished") or missing),
            ("wall time", _duration(info.get("wall_seconds"))),
            ("epochs", _of(info.get("epochs_run"), info.get("epochs_planned"))),
            ("iterations", _of(info.get("iterations_run"), planned_iters)
             + ("" if complete or planned_iters is not None else " (no train.max_iters)")),
            ("stopped", info.get("stopped") or missing), ("device", info.get("device") or missing),
            ("last checkpoint", checkpoints.get("last") or "none"),
            ("best checkpoint", checkpoints.get("best") or "none (no evaluation kept one)")]


def _dataset_html(dataset: dict[str, Any]) -> str:
    """Dataset path, classes and per split its file and image / box counts."""
    classes = dataset.get("classes")
    out = [_kv_table([("dataset", dataset.get("path") or UNKNOWN),
                      ("classes", f"{len(classes)}: {', '.join(map(str, classes))}" if classes else UNKNOWN)])]
    splits = dataset.get("splits") or {}
    if splits:
        out.append('<table class="splits"><tr><th>split</th><th>source</th><th>images</th><th>boxes</th></tr>'
                   + "".join(f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(str(s.get('source', '')))}"
                             f"</td><td>{s.get('images', UNKNOWN)}</td><td>{s.get('boxes', UNKNOWN)}</td></tr>"
                             for name, s in splits.items() if isinstance(s, dict)) + "</table>")
    else:
        out.append("<p>split files and image / box counts: unknown (no run.json)</p>")
    return "\n".join(out)


def run_summary_html(run_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """The page's top: when, how long, epochs of planned, why it stopped, dataset, checkpoints."""
    info, why = read_run_info(run_dir)
    notes = [why] if why else []
    logged = max((r["iter"] for r in rows if is_number(r.get("iter"))), default=None)
    if info is not None and is_number(info.get("iterations_run")) and logged is not None \
            and logged > info["iterations_run"]:
        notes.append(f"run.json is from an earlier session (iteration {info['iterations_run']}); "
                     f"the log now reaches iteration {logged}")
    data = info if info is not None else _fallback_info(run_dir, rows, metrics)
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = ["<h2>Run</h2>", _kv_table(_run_pairs(data, info is not None) + [("report written", written)])]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts += ["<h3>Dataset</h3>", _dataset_html(data.get("dataset") or {})]
    return "\n".join(parts)


def render(run_dir: Path) -> str:
    """The page's HTML from the files in `run_dir`."""
    rows = _rows(run_dir / "log.jsonl")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    diag = run_dir / "diagnostics"
    parts = [f"<h1>fcosdet run {html.escape(run_dir.name)}</h1>", run_summary_html(run_dir, rows, metrics),
             "<h2>Training</h2>", _timing_html(rows)]
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
             "pre{background:#f5f5f5;padding:8px;font-size:12px}figure{margin:8px 0}"
             "table.kv th,table.kv td,table.splits td:nth-child(-n+2){text-align:left}.note{color:#a04000}")
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
