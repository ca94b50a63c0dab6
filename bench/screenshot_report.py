"""Screenshot the HTML report in headless Chromium, to look at it as a reader does.

Runs an audit with ``--html`` (or takes an existing report), then makes two PNGs with headless
Chromium: the report as it opens, and the report with the ``passed`` outcome unticked in its
filter (a copy of the file whose ``passed`` checkbox starts unchecked), which shows that the
filter, pure CSS, hides what it should in a real browser. Each PNG is also cut into tiles of
``--tile`` pixels, small enough for an image viewer that downscales tall images.

    python bench/screenshot_report.py                               # the default audit
    python bench/screenshot_report.py --html /tmp/r.html            # an existing report
    python bench/screenshot_report.py -- -k "spearman or lipschitz" \\
        --set checks.1.expect.min=0.5 --set checks.4.expect.max=1000    # with two failures

Arguments after ``--`` go to ``robaudit run``. Needs ``chromium`` (Debian: ``apt-get install
chromium``) or another Chromium-based browser given with ``--browser``. Writes into ``--out``
(default ``/tmp/robaudit-screenshots``) and prints the paths.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def run_audit(spec: Path, html: Path, extra: list[str]) -> int:
    """``robaudit run SPEC --html HTML EXTRA`` in a subprocess; its exit code."""
    command = [sys.executable, "-m", "robaudit", "run", str(spec), "--html", str(html), *extra]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def untick(html: Path, outcome: str, out: Path) -> Path:
    """A copy of the report whose filter starts with ``outcome`` hidden."""
    text = html.read_text(encoding="utf-8")
    box = f'id="show-{outcome}" checked>'
    if box not in text:
        raise SystemExit(f"{html}: no filter checkbox for {outcome!r} (no such checks?)")
    out.write_text(text.replace(box, f'id="show-{outcome}">'), encoding="utf-8")
    return out


def screenshot(browser: str, html: Path, png: Path, width: int, height: int) -> Path:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not png.exists():
        raise SystemExit(f"{browser} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return png


def tiles(png: Path, tile: int) -> list[Path]:
    """``png`` cut into horizontal strips of ``tile`` pixels (blank strips dropped)."""
    from PIL import Image, ImageChops

    image = Image.open(png).convert("RGB")
    paths = []
    for index, top in enumerate(range(0, image.height, tile)):
        strip = image.crop((0, top, image.width, min(top + tile, image.height)))
        background = Image.new("RGB", strip.size, strip.getpixel((0, strip.height - 1)))
        if ImageChops.difference(strip, background).getbbox() is None:
            continue
        path = png.with_name(f"{png.stem}.{index}{png.suffix}")
        strip.save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "resnet.yaml")
    parser.add_argument("--html", type=Path, help="screenshot this report; run nothing")
    parser.add_argument("--out", type=Path, default=Path("/tmp/robaudit-screenshots"))
    parser.add_argument("--browser", default=None, help="a Chromium-based browser's command")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--tile", type=int, default=1500)
    options = parser.parse_args(argv)

    browser = options.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or pass --browser")
    options.out.mkdir(parents=True, exist_ok=True)
    html = options.html
    if html is None:
        html = options.out / "report.html"
        code = run_audit(options.spec, html, extra)
        if code not in (0, 1):  # 1: a check failed, still a report to look at
            raise SystemExit(f"robaudit exited with {code}")
    pages = {"report": html}
    if re.search(r'id="show-passed" checked>', html.read_text(encoding="utf-8")):
        pages["report-without-passed"] = untick(html, "passed", options.out / "filtered.html")
    for name, page in pages.items():
        png = screenshot(browser, page.resolve(), options.out / f"{name}.png", options.width,
                         options.height)
        print(png)
        for path in tiles(png, options.tile):
            print("  ", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
