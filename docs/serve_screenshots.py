"""The screenshots of docs/serve.md: each view of ``skimgfeat serve``, taken with headless Chromium.

Builds a small archive of DVD-case photos from ../shared/images/objects (catalogue
photos and some phone photos, one re-encoded copy), extracts it with
``skimgfeat extract --hashes --local-features``, writes a lot table and an intake report
(``skimgfeat match`` of a consignor's phone photo), serves it on 127.0.0.1 and saves one
PNG per view in docs/_static/. Needs chromium and chromedriver (Debian packages) and
selenium (the test extra).

    python docs/serve_screenshots.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
OBJECTS = SHARED / "images" / "objects"
STATIC = ROOT / "docs" / "_static"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def skimgfeat(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": str(SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth")}
    return subprocess.run([sys.executable, "-m", "skimgfeat", *map(str, args)], check=True, env=env, **kwargs)


def build(folder: Path) -> tuple[Path, Path, Path]:
    photos = folder / "photos"
    photos.mkdir()
    for number in range(1, 13):
        for kind in ("reference", "canon") if number <= 6 else ("reference",):
            shutil.copy(OBJECTS / f"dvd{number:03d}_{kind}.jpg", photos / f"dvd{number:03d}_{kind}.jpg")
    from PIL import Image

    with Image.open(OBJECTS / "dvd004_reference.jpg") as image:
        image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(photos / "dvd004_2.jpg",
                                                                                         quality=70)
    skimgfeat("extract", photos, "-o", folder / "features", "--pattern", "*.jpg", "--hashes", "--local-features",
              "--aggregate", "none", "-q")
    lots = folder / "lots.csv"
    rows = ["item_id,price,sale,date,title"] + [
        f"dvd{n:03d},{40 + 7 * n},{'Autumn' if n % 2 else 'Spring'} sale,2025-{n:02d}-15,DVD case {n}"
        for n in range(1, 13)]
    lots.write_text("\n".join(rows) + "\n")
    new = folder / "today" / "consignor_17.jpg"
    new.parent.mkdir()
    shutil.copy(OBJECTS / "dvd002_e63.jpg", new)
    report = folder / "report.csv"
    with open(report, "w") as out:
        skimgfeat("match", new, "--against", folder / "features", "-k", "5", stdout=out)
    return folder / "features", lots, report


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = Path(tempfile.mkdtemp(prefix="serve-shots-"))
    archive, lots, report = build(folder)
    log = folder / "serve.log"
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": str(SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth")}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "skimgfeat", "serve", str(archive), "--port", "0", "--lots",
                                   str(lots), "--report", str(report)], stderr=out, env=env)
    try:
        while not (found := re.search(r"127\.0\.0\.1:(\d+)", log.read_text())):
            if server.poll() is not None:
                raise SystemExit(log.read_text())
            time.sleep(0.2)
        base = f"http://127.0.0.1:{found.group(1)}"
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*FLAGS, f"--user-data-dir={folder / 'profile'}", "--window-size=1280,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(base + "/")
            driver.find_element(By.NAME, "photo").send_keys(str(OBJECTS / "dvd003_palm.jpg"))
            driver.find_element(By.ID, "upload-form").submit()
            WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "results"))
            shots = {"serve-search-upload.png": None}
            _shot(driver, STATIC / "serve-search-upload.png")
            for name, path in (("serve-search-name.png", "/search?q=dvd004_reference.jpg"),
                               ("serve-pair.png", "/pair?q=dvd001_canon.jpg&b=dvd001_reference.jpg"),
                               ("serve-review-duplicates.png", "/review/duplicates"),
                               ("serve-review-intake.png", "/review/intake"),
                               ("serve-item.png", "/item/dvd005")):
                driver.get(base + path)
                time.sleep(2)  # thumbnails, and the tiles the page verifies
                _shot(driver, STATIC / name)
                shots[name] = path
            driver.get(base + "/review/duplicates")
            driver.find_element(By.ID, "group-not-same").click()
            driver.get(base + "/decisions")
            _shot(driver, STATIC / "serve-decisions.png")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(60)
    print(f"screenshots in {STATIC}")


def _shot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 20, 600), 1600))
    driver.save_screenshot(str(path))


if __name__ == "__main__":
    main()
