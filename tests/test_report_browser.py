"""The run report and eval diagnostics end to end on bccd, and report.html in a real browser.

The browser is Debian's Chromium (/usr/bin/chromium). When it is missing the test installs it
with `apt-get install -y chromium` (running `apt-get update` first if needed); it skips, with
that message, only when the installation fails (no root, no network).
"""
import base64
import json
import re
import shutil
import subprocess

import pytest

from fcosdet.cli.main import run as cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
TINY = ["--set", "model.depth=10", "--set", "model.fpn_channels=32", "--set", "model.feat_channels=32",
        "--set", "model.stacked_convs=1", "--set", "data.scale=[192,144]", "--set", "data.multiscale_short=null",
        "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.log_interval=1",
        "--set", "train.warmup_iters=2", "--set", "test.max_per_img=20", "--set", "test.score_thr=0.0"]


def _subset(shared, out, name, count):
    """The first `count` images of bccd's `name`.json (real images and boxes) as a COCO file."""
    coco = json.loads((shared / "bccd" / f"{name}.json").read_text())
    ids = {im["id"] for im in coco["images"][:count]}
    coco["images"] = [im for im in coco["images"] if im["id"] in ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (out / f"{name}.json").write_text(json.dumps(coco))
    return coco


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """A 2-iteration bccd run on 8 train / 6 val images, and `eval --out` of it."""
    root = tmp_path_factory.mktemp("bccd_small")
    _subset(shared_data, root, "train", 8)
    val = _subset(shared_data, root, "val", 6)
    (root / "data.yaml").write_text(f"format: coco\nroot: {shared_data / 'bccd'}\n"
                                    f"train: {{images: images, annotations: {root / 'train.json'}}}\n"
                                    f"val: {{images: images, annotations: {root / 'val.json'}}}\n")
    run_dir = root / "run"
    cli(["train", "fcos_r18_cpu", "--data", str(root / "data.yaml"), "--run-dir", str(run_dir), *TINY,
         "--set", "train.epochs=1", "--set", "train.max_iters=2"])
    cli(["eval", str(run_dir / "last.pt"), "--out", str(root / "eval")])
    return {"run": run_dir, "eval": root / "eval", "val": val}


def test_eval_out_writes_diagnostics(run):
    out, val = run["eval"], run["val"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"AR1", "AR10", "AR100"} <= set(metrics) and metrics["images"] == 6
    assert metrics["boxes"] == len(val["annotations"])
    cm = json.loads((out / "confusion_matrix.json").read_text())
    matrix = cm["matrix"]
    assert cm["classes"] == ["WBC", "RBC", "Platelets", "background"] and len(matrix) == 4
    # every ground-truth box lands in exactly one cell of its class's row
    per_class = [sum(1 for a in val["annotations"] if a["category_id"] == k + 1) for k in range(3)]
    assert [sum(row) for row in matrix[:3]] == per_class
    assert matrix[3][3] == 0
    for name in ("confusion_matrix.png", "pr_curves.png", "pr_curves.json"):
        assert (out / name).stat().st_size > 1000, name
    assert len(list((out / "worst").glob("*.jpg"))) == 6


def test_report_is_self_contained(run):
    page = (run["run"] / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) >= 5 and all(src.startswith("data:image/") for src in images)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)
    for src in images:  # every inline image decodes as a PNG or JPEG
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff"
    for text in ("loss", "Platelets", "AR100", "Resolved config", "images/s", "ground truth | detections"):
        assert text in page, text
    # the run table at the top, from the run.json training wrote
    top = page.split("<h2>Training</h2>")[0]
    for text in ("<h2>Run</h2>", "of 1 planned", "2 of 2 planned", "<th>stopped</th><td>max_iters</td>",
                 f"<th>last checkpoint</th><td>{run['run'] / 'last.pt'}</td>", "3: WBC, RBC, Platelets"):
        assert text in top, text
    assert re.search(r"<td>val</td><td>[^<]*val\.json</td><td>6</td><td>%d</td>" % len(run["val"]["annotations"]), top)


def _chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        steps = (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                 ["apt-get", "install", "-y", "chromium"])
        for step in steps:
            try:
                subprocess.run(step, capture_output=True, timeout=600, env={"DEBIAN_FRONTEND": "noninteractive",
                                                                          "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            except (OSError, subprocess.TimeoutExpired):
                break
            if shutil.which(CHROMIUM):
                break
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Chromium is not installed and `apt-get install -y chromium` failed (needs root and the "
                    "Debian mirror); install it to run the browser test")
    return CHROMIUM


def _open(page, tmp_path, tag):
    """(body tag of the DOM after load, console lines, screenshot path) of a page in headless Chromium."""
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--enable-logging=stderr", "--v=0", "--window-size=1300,1800"]
    dom = subprocess.run(base + [f"--user-data-dir={tmp_path / (tag + '_a')}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    shot = tmp_path / f"{tag}.png"
    subprocess.run(base + [f"--user-data-dir={tmp_path / (tag + '_b')}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    return (body.group(0) if body else ""), console, shot


def test_report_loads_in_headless_chromium(run, tmp_path):
    # control: a page with a missing image and a script error is seen as broken
    from fcosdet.analysis.report import CHECK_SCRIPT
    bad = tmp_path / "bad.html"
    bad.write_text(f"<html><head>{CHECK_SCRIPT}</head><body><img src='missing.png'>"
                   "<script>console.error('boom'); undefined_function();</script></body></html>")
    body, console, _ = _open(bad, tmp_path, "bad")
    assert 'data-images="broken 1"' in body and 'data-errors="1"' in body
    assert any("boom" in line for line in console)

    body, console, shot = _open(run["run"] / "report.html", tmp_path, "report")
    count = len(re.findall(r"<img ", (run["run"] / "report.html").read_text()))
    assert f'data-images="ok {count}"' in body and 'data-errors="0"' in body
    assert console == []
    from PIL import Image
    with Image.open(shot) as im:
        assert im.size == (1300, 1800)
        colours = im.convert("L").resize((65, 90)).getextrema()
    assert colours[0] < 100 < colours[1]  # not a blank page
