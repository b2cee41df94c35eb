"""The screenshots of docs/serve.md: each view of ``skimgfeat serve``, taken with headless Chromium.

Builds a small archive from the Grocery Store Dataset in ../shared (MIT licence, Klasson et
al. 2019): the web-shop ("iconic") photo of twelve packaged products as the catalogue photo
of a lot, a shop photo beside some of them, one re-encoded copy; extracts it with
``skimgfeat extract --hashes --local-features``; writes a lot table and an intake report
(``skimgfeat match`` of a new shop photo); serves it on 127.0.0.1 and saves one PNG per
view in docs/_static/. Needs chromium and chromedriver (Debian packages) and selenium
(the test extra).

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
STATIC = ROOT / "docs" / "_static"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def skimgfeat(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": str(SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth")}
    return subprocess.run([sys.executable, "-m", "skimgfeat", *map(str, args)], check=True, env=env, **kwargs)


GROCERY = SHARED / "images" / "grocery"
PRODUCTS = ("Arla-Sour-Cream", "Arla-Mild-Vanilla-Yoghurt", "Arla-Lactose-Medium-Fat-Milk",
            "Arla-Natural-Mild-Low-Fat-Yoghurt", "Arla-Ecological-Sour-Cream", "Alpro-Fresh-Soy-Milk",
            "Arla-Natural-Yoghurt", "Oatly-Natural-Oatghurt", "Tropicana-Apple-Juice", "Bravo-Orange-Juice",
            "Yoggi-Strawberry-Yoghurt", "Valio-Vanilla-Yoghurt")


def shop_photos(product: str) -> list[Path]:
    return sorted(GROCERY.glob(f"train/*/*/{product}/*.jpg"))


def build(folder: Path) -> tuple[Path, Path, Path]:
    import csv

    from PIL import Image

    iconic = {row[0]: GROCERY / row[4].lstrip("/") for row in list(csv.reader(open(GROCERY / "classes.csv")))[1:]}
    photos = folder / "photos"
    photos.mkdir()
    for number, product in enumerate(PRODUCTS, start=101):
        shutil.copy(iconic[product], photos / f"lot{number}_1.jpg")
        if number <= 106:
            shutil.copy(shop_photos(product)[1], photos / f"lot{number}_2.jpg")
    with Image.open(iconic[PRODUCTS[2]]) as image:  # a dealer's re-encoded copy of lot 103's catalogue photo
        image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(photos / "lot113_1.jpg",
                                                                                         quality=70)
    skimgfeat("extract", photos, "-o", folder / "features", "--pattern", "*.jpg", "--hashes", "--local-features",
              "--aggregate", "none", "-q")
    lots = folder / "lots.csv"
    rows = ["item_id,price,sale,date,title"] + [
        f"lot{number},{12 + 3 * (number - 100)},{'Autumn' if number % 2 else 'Spring'} sale,2025-{number - 100:02d}-15,"
        f"{product.replace('-', ' ')}" for number, product in enumerate(PRODUCTS, start=101)]
    lots.write_text("\n".join(rows) + "\n")
    new = folder / "today" / "consignor_17.jpg"
    new.parent.mkdir()
    shutil.copy(shop_photos(PRODUCTS[4])[5], new)
    report = folder / "report.csv"
    with open(report, "w") as out:
        skimgfeat("match", new, "--against", folder / "features", "-k", "12", stdout=out)
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
            driver.find_element(By.NAME, "photo").send_keys(str(shop_photos(PRODUCTS[0])[3]))
            driver.find_element(By.ID, "upload-form").submit()
            WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "results"))
            _shot(driver, STATIC / "serve-search-upload.png")
            for name, path in (("serve-search-name.png", "/search?q=lot103_1.jpg"),
                               ("serve-pair.png", "/pair?q=lot102_2.jpg&b=lot102_1.jpg"),
                               ("serve-review-duplicates.png", "/review/duplicates"),
                               ("serve-review-intake.png", "/review/intake"),
                               ("serve-item.png", "/item/lot101")):
                driver.get(base + path)
                time.sleep(2)  # thumbnails, and the tiles the page verifies
                _shot(driver, STATIC / name)
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
    driver.set_window_size(1280, min(max(height + 20, 600), 2400))
    driver.save_screenshot(str(path))


if __name__ == "__main__":
    main()
