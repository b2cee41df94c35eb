"""``skimgfeat serve`` in a real browser: headless Chromium driven through chromedriver (Selenium).

One server for the module, on a tiny archive folder of real DVD-case photos (the Stanford
Mobile Visual Search data, see ../shared/README.md) made by two days of ``skimgfeat
ingest``, run as the user runs it (``skimgfeat serve ARCHIVE``, a real process) with a token.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from _launcher import run_cli, start_cli, wait_until
from conftest import SHARED
from PIL import Image

pytest.importorskip("starlette", reason="skimgfeat serve needs the serve extra")
pytest.importorskip("cv2", reason="the same-object verdicts need OpenCV (the match extra)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests drive Chromium with Selenium")

OBJECTS = SHARED / "images" / "objects"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "s3cret-" + uuid.uuid4().hex[:8]
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000")


@pytest.fixture(scope="module")
def objects_dir() -> Path:
    """Photos of 50 DVD cases: a clean cover (the catalogue photo) and four phone photos each."""
    if not OBJECTS.is_dir():
        pytest.skip(f"needs {OBJECTS} (the project's shared test data; see ../shared/README.md)")
    return OBJECTS


@pytest.fixture(scope="module")
def archive(tmp_path_factory, objects_dir, shared_weights):
    """An archive folder after two days of intake, as `skimgfeat ingest` makes it.

    Day 1: four catalogue photos and a phone photo of case 3, with a lot table. Day 2: a
    consignor's phone photo of case 1 and a dealer's re-encoded copy of case 4's catalogue photo.
    """
    root = tmp_path_factory.mktemp("serve")
    day1, day2 = root / "day1", root / "day2"
    day1.mkdir()
    day2.mkdir()
    for name in ("dvd001_reference.jpg", "dvd002_reference.jpg", "dvd003_reference.jpg", "dvd004_reference.jpg",
                 "dvd003_canon.jpg"):
        shutil.copy(objects_dir / name, day1 / name)
    pd.DataFrame({"item_id": ["dvd001", "dvd002", "dvd003", "dvd004"], "price": [120, 95, 60, 80],
                  "sale": ["2024-10 Autumn", "2024-10 Autumn", "2025-03 Spring", "2025-03 Spring"],
                  "title": ["Case one", "Case two", "Case three", "Case four"]}).to_csv(root / "lots.csv", index=False)
    shutil.copy(objects_dir / "dvd001_canon.jpg", day2 / "consignor_1.jpg")
    _reencoded(objects_dir / "dvd004_reference.jpg", day2 / "dvd004_2.jpg", scale=0.75, quality=70)
    archive = root / "archive"
    env = {**os.environ, "SKIMGFEAT_WEIGHTS": str(shared_weights)}  # the session's artifact cache included
    for day, more in ((day1, ("--lots", root / "lots.csv")), (day2, ())):
        result = run_cli("ingest", day, "--archive", archive, "--intake", day.name, "-q", *more, env=env, timeout=900)
        assert result.returncode == 0, result.stderr
    (root / "outside.jpg").write_bytes((objects_dir / "dvd005_reference.jpg").read_bytes())
    os.symlink(root / "outside.jpg", archive / "photos" / "escape.jpg")  # a link out of the photo folder
    return root, archive, env


@pytest.fixture(scope="module")
def server(archive):
    """``skimgfeat serve ARCHIVE`` with a token on 127.0.0.1 and a free port; its port."""
    root, folder, env = archive
    process = start_cli("serve", folder, "--port", "0", "--token", TOKEN, "--cache-dir", root / "cache", env=env)
    wait_until(lambda: "serving" in process.output()[1], process, timeout=300)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", process.output()[1]).group(1))
    yield port
    process.send_signal(2)  # Ctrl-C: uvicorn shuts down
    assert process.wait(60) == 0, process.output()[1]


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    """Headless Chromium holding the server's token cookie (set by the first visit with ?token=)."""
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {message}")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    driver.get(f"http://127.0.0.1:{server}/?token={TOKEN}")
    yield Page(driver, f"http://127.0.0.1:{server}")
    driver.quit()


class Page:
    """The driver and the server's address: what the tests do, in the words of a user."""

    def __init__(self, driver, base: str) -> None:
        self.driver, self.base = driver, base

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def upload(self, photo: Path) -> None:
        from selenium.webdriver.common.by import By

        self.open("/")
        form = self.driver.find_element(By.ID, "upload-form")
        form.find_element(By.NAME, "photo").send_keys(str(photo))
        self._then_next_page(form.submit)

    def tiles(self) -> list[tuple[str, str]]:
        """(image_path, verdict) of each result tile, in rank order."""
        from selenium.webdriver.common.by import By

        return [(tile.get_attribute("data-name"), tile.find_element(By.CLASS_NAME, "verdict").text)
                for tile in self.driver.find_elements(By.CSS_SELECTOR, "#results figure.tile")]

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "main").text

    def click(self, css: str) -> None:
        """Click what ``css`` selects and wait for the page it leads to."""
        from selenium.webdriver.common.by import By

        self._then_next_page(self.driver.find_element(By.CSS_SELECTOR, css).click)

    def _then_next_page(self, action) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.expected_conditions import staleness_of
        from selenium.webdriver.support.ui import WebDriverWait

        page = self.driver.find_element(By.TAG_NAME, "html")
        action()
        WebDriverWait(self.driver, 120).until(staleness_of(page))


def _reencoded(source: Path, target: Path, *, scale: float, quality: int) -> Path:
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.resize((round(image.width * scale), round(image.height * scale))).save(target, quality=quality)
    return target


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    """A raw GET: the path goes to the server exactly as written (no client-side normalising of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    if token is not None:
        connection.putheader("Authorization", f"Bearer {token}")
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def _post_photo(port: int, data: bytes, filename: str) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/api/search", body=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


# -- search by photo ---------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_an_uploaded_copy_finds_its_original_first_as_a_copy_with_its_lot(browser, tmp_path):
    copy = _reencoded(OBJECTS / "dvd002_reference.jpg", tmp_path / "from_a_dealer.jpg", scale=0.6, quality=55)
    browser.upload(copy)
    assert browser.tiles()[0] == ("day1/dvd002_reference.jpg", "copy")
    assert "Case two" in browser.text() and "95" in browser.text()  # the lot columns beside the result


@pytest.mark.shared
def test_a_phone_photo_finds_the_catalogue_photo_as_the_same_object_and_shows_the_matched_keypoints(browser):
    from selenium.webdriver.common.by import By

    browser.upload(OBJECTS / "dvd003_palm.jpg")  # the case photographed with another phone, not in the archive
    verdicts = dict(browser.tiles())
    assert verdicts["day1/dvd003_reference.jpg"] == "same_object"
    assert {verdicts[name] for name in verdicts if not name.startswith("day1/dvd003")} == {"similar"}
    browser.click('figure[data-name="day1/dvd003_reference.jpg"] a')
    assert browser.driver.find_element(By.ID, "pair-verdict").text == "same_object"
    picture = browser.driver.find_element(By.ID, "pair-picture")
    width = browser.driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture)
    assert width > 400  # the two photos side by side, drawn by the matcher


@pytest.mark.shared
def test_a_search_by_name_verifies_its_tiles_in_the_page(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    status, page = _get(server, "/search?q=dvd003_canon.jpg&k=4")  # a file name: the archived photo of that name
    assert status == 200 and page.count(b"checking\xe2\x80\xa6") == 4  # answered before any verification
    browser.open("/search?q=dvd003_canon.jpg")
    WebDriverWait(browser.driver, 60).until(lambda _: "checking…" not in [v for _, v in browser.tiles()])
    verdicts = dict(browser.tiles())  # in distance order, each verdict filled in by the page's script
    assert verdicts.pop("day1/dvd003_reference.jpg") == "same_object" and set(verdicts.values()) == {"similar"}


# -- review and decisions ----------------------------------------------------------------------------------------


@pytest.mark.shared
def test_a_pair_marked_not_the_same_leaves_the_review_and_later_duplicates_runs(browser, archive, server):
    _, folder, env = archive
    before = run_cli("duplicates", "--index", folder, "-q", env=env)
    copies = {"day1/dvd004_reference.jpg", "day2/dvd004_2.jpg"}
    assert set(pd.read_csv(io.StringIO(before.stdout))["image_path"]) == copies
    browser.open("/review/duplicates")
    assert "1 of 1 groups wait" in browser.text() and "day2/dvd004_2.jpg" in browser.text()
    browser.click("#group-not-same")
    assert "Nothing waits for a decision" in browser.text() and "0 of 0 groups" in browser.text()
    browser.open("/decisions")
    assert "not_same" in browser.text() and "day2/dvd004_2.jpg" in browser.text()
    status, exported = _get(server, "/decisions.csv")
    decided = pd.read_csv(io.BytesIO(exported))
    assert status == 200 and decided[["image_a", "image_b", "decision"]].values.tolist() == [
        ["day1/dvd004_reference.jpg", "day2/dvd004_2.jpg", "not_same"]]
    after = run_cli("duplicates", "--index", folder, "-q", env=env)
    assert after.returncode == 0 and pd.read_csv(io.StringIO(after.stdout)).empty


@pytest.mark.shared
def test_an_intake_finding_marked_not_the_same_is_no_longer_reported_by_match(browser, archive):
    _, folder, env = archive
    reported = pd.read_csv(folder / "reports" / "day2.csv")  # what `ingest` said of the day's photos
    first = reported.iloc[0]
    assert first[["image_path", "match", "verdict"]].tolist() == ["day2/consignor_1.jpg", "day1/dvd001_reference.jpg",
                                                                 "same_object"]
    browser.open("/review/intake")
    assert "day2/consignor_1.jpg" in browser.text() and "day1/dvd001_reference.jpg" in browser.text()
    assert "Case one" in browser.text()  # the archived photo's lot
    assert browser.driver.find_element("id", "finding-pair").get_attribute("href").endswith(
        "/pair?q=day2%2Fconsignor_1.jpg&b=day1%2Fdvd001_reference.jpg")
    browser.click('#finding button[value="not_same"]')
    assert "day2/consignor_1.jpg" not in browser.text()
    again = run_cli("match", "day2/consignor_1.jpg", "--against", folder, "-k", "5", env=env)
    found = pd.read_csv(io.StringIO(again.stdout))
    assert again.returncode == 0 and "day1/dvd001_reference.jpg" not in set(found["image_path"])
    assert found["rank"].tolist() == list(range(1, len(found) + 1))


@pytest.mark.shared
def test_the_item_page_shows_each_photo_with_its_quality_measures(browser, server):
    browser.open("/item/dvd003")
    assert "day1/dvd003_canon.jpg" in browser.text() and "sharpness" in browser.text()
    status, body = _get(server, "/api/item/dvd003")
    item = json.loads(body)
    assert status == 200 and [photo["image_path"] for photo in item["photos"]] == ["day1/dvd003_canon.jpg",
                                                                                  "day1/dvd003_reference.jpg"]
    assert item["lot"]["title"] == "Case three" and item["photos"][0]["measures"]["width"] > 0


@pytest.mark.shared
def test_the_json_api_answers_what_the_pages_show(server):
    status, body = _get(server, "/api/search?q=day1/dvd003_canon.jpg&k=3&verify=3")
    found = json.loads(body)
    assert status == 200 and found["query"]["image_path"] == "day1/dvd003_canon.jpg"
    first = found["hits"][0]
    assert (first["image_path"], first["verdict"], first["verified"]) == ("day1/dvd003_reference.jpg", "same_object",
                                                                          True)
    assert first["lot"] == {"price": 60, "sale": "2025-03 Spring", "title": "Case three"} and first["inliers"] > 20
    status, body = _get(server, "/api/pair?q=day1/dvd003_canon.jpg&b=day1/dvd003_reference.jpg")
    pair = json.loads(body)
    assert len(pair["points_a"]) == len(pair["points_b"]) == pair["inliers"]
    unverified = json.loads(_get(server, "/api/search?q=dvd003&k=2")[1])["hits"]  # an item id: its first photo
    assert [hit["verified"] for hit in unverified] == [False, False]
    status, body = _get(server, "/api/verify?q=dvd003&b=" + unverified[0]["image_path"])
    assert status == 200 and json.loads(body)["verified"] is True
    assert _get(server, "/api/search?q=no_such_lot")[0] == 404
    assert _get(server, "/api/search?q=dvd003&k=0")[0] == 400
    endpoints = json.loads(_get(server, "/api")[1])["endpoints"]
    assert "POST /api/decisions (JSON: image_a, image_b, decision, source)" in endpoints


# -- safety ------------------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_only_photos_inside_the_photo_folder_are_served(server):
    assert _get(server, "/photo/day1/dvd001_reference.jpg")[0] == 200
    assert _get(server, "/thumb/day1/dvd001_reference.jpg")[0] == 200
    for path in ("/photo/../../../../etc/passwd", "/photo/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/photo/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/photo//etc/passwd", "/photo/%2Fetc%2Fpasswd",
                 "/thumb/..%2F..%2F..%2Foutside.jpg", "/photo/day1/../../../outside.jpg",
                 "/photo/escape.jpg", "/thumb/escape.jpg", "/photo/no_such.jpg",
                 "/report-thumb/99/a", "/upload-thumb/..%2F..%2Fetc"):
        status, _ = _get(server, path)
        assert status == 404, path


@pytest.mark.shared
def test_every_request_needs_the_token(server, archive):
    assert _get(server, "/api/decisions", token=None)[0] == 401
    assert _get(server, "/api/decisions", token="wrong")[0] == 401
    assert _get(server, "/api/decisions")[0] == 200
    status, _ = _get(server, f"/api?token={TOKEN}", token=None)
    assert status == 303  # sets the cookie and drops the token from the address
    _, folder, _ = archive
    refused = run_cli("serve", folder, "--host", "0.0.0.0")
    assert refused.returncode == 2 and "--token" in refused.stderr


@pytest.mark.shared
def test_a_50_megapixel_png_and_a_text_file_named_jpg_are_refused_with_400(browser, server, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("L", (7072, 7072)).save(huge)  # 50.0 megapixels, a few hundred kB
    text = tmp_path / "notes.jpg"
    text.write_text("lot 7: two DVD cases, boxed\n" * 40)
    status, answer = _post_photo(server, huge.read_bytes(), "huge.png")
    assert status == 400 and "too large a picture" in answer["error"] and "50013184 pixels" in answer["error"]
    status, answer = _post_photo(server, text.read_bytes(), "notes.jpg")
    assert status == 400 and "not a photo" in answer["error"] and "not an image" in answer["error"]
    browser.upload(text)
    assert "notes.jpg is not a photo that can be read" in browser.text()


def test_a_running_server_shows_a_later_intake_without_a_restart(archive, shared_weights, tmp_path):
    # The reviewers' server runs for days; each morning's `skimgfeat ingest` makes a new generation of
    # the archive. The server follows it: the new photos are found and the new report is the one to review.
    from skimgfeat.archive import ingest
    from skimgfeat.serve.app import ServeApp
    from skimgfeat.serve.search import Query
    from skimgfeat.serve.source import open_source

    _, folder, _ = archive
    copy = tmp_path / "archive"
    shutil.copytree(folder, copy, symlinks=True)  # the module's server keeps its own archive as it is
    state = ServeApp(open_source(copy), cache_dir=tmp_path / "cache")
    first = state.source.generation
    assert state.source.resolve_name("dealer_7.jpg") is None
    assert not state.follow_archive()  # nothing newer yet: the same generation stays

    day3 = tmp_path / "day3"
    day3.mkdir()
    _reencoded(OBJECTS / "dvd002_reference.jpg", day3 / "dealer_7.jpg", scale=0.8, quality=75)
    stop = threading.Event()
    state.follow_archive_every(0.2, stop)
    try:
        ingest(day3, copy, intake="day3", weights=shared_weights)

        def findings() -> dict:
            return {(row["image_a"], row["image_b"]): row["verdict"] for row in state.review.intake()}

        deadline = time.monotonic() + 60  # the intake is over: the next check (0.2 s) shows it
        while ("day3/dealer_7.jpg", "day1/dvd002_reference.jpg") not in findings() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
    assert state.source.generation > first
    assert state.source.resolve_name("dealer_7.jpg") == "day3/dealer_7.jpg"
    assert findings() == {("day3/dealer_7.jpg", "day1/dvd002_reference.jpg"): "copy"}  # day 3's report, not day 2's
    hits = state.searcher.search(Query(label="dealer_7.jpg", name="day3/dealer_7.jpg"), k=3)
    assert hits[0].image_path == "day1/dvd002_reference.jpg" and hits[0].verdict == "copy"
