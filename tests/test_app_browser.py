"""The Streamlit page in a real browser: a `streamlit run` process serving the tiny run, driven by
headless Chromium (Debian's chromium and chromium-driver, installed by .ci/run when missing).

The screenshot of the answered query is kept as a test artifact: under the test's tmp folder and
as test-artifacts/app.png in the repository root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO

from ctl_lightning.app import logic
from ctl_lightning.benchmarks.loadtest import free_port
from ctl_lightning.retrieval.recommend import Recommender

APP = REPO / "src" / "ctl_lightning" / "app" / "streamlit_app.py"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.access(p, os.X_OK)), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and os.access(p, os.X_OK)), None)
WAIT = 90  # seconds: generous upper bounds for explicit conditions, never timing assertions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="browser test needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
        "`.ci/run` installs them, or: apt-get install -y chromium chromium-driver",
    ),
]

# True once every <img> in the container has loaded with real pixels; the count must match too.
IMAGES_RENDERED = """
const [selector, count] = arguments;
const imgs = Array.from(document.querySelectorAll(selector + ' img'));
return imgs.length === count && imgs.every(img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app_browser")


@pytest.fixture(scope="module")
def app_url(tiny_run, shots):
    """A real `streamlit run` of the page against the tiny run; its log is shown if it dies."""
    tmp_path = shots
    port = free_port()
    log = tmp_path / "streamlit.log"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--",
        "--run-dir",
        str(tiny_run),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer on {url} within {WAIT}s:\n{log.read_text(errors='replace')}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


@pytest.fixture(scope="module")
def browser(shots):
    tmp_path = shots
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1500",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, selector: str) -> str:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector)


def type_product(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, ".st-key-product input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text, Keys.ENTER)


def choose_query_mode(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    options = driver.find_elements(By.CSS_SELECTOR, ".st-key-query_mode label")
    [option] = [o for o in options if o.text.strip() == label]
    option.click()


def save_screenshot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / name)
    print(f"screenshot: {path} (copied to {ARTIFACTS / name})")
    return path


def wait_for_grids(driver, wait, counts: dict[str, int]) -> None:
    for mode, count in counts.items():
        selector = f".st-key-{mode}-grid"

        def rendered(d, selector=selector, count=count):
            return d.execute_script(IMAGES_RENDERED, selector, count)

        wait.until(rendered, f"{mode} grid: {count} images did not render")
        sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0] + ' img')).map(i => [i.naturalWidth, i.naturalHeight]);", selector
        )
        assert len(sizes) == count and all(w > 0 and h > 0 for w, h in sizes), sizes


def assert_no_traceback(driver) -> None:
    from selenium.webdriver.common.by import By

    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text


def test_browser_query_renders_both_grids_and_unknown_id_shows_error(app_url, browser, tiny_run, shots, record_property):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT, poll_frequency=0.2)
    recommender = Recommender(tiny_run)
    product = str(int(recommender.similar.row_ids[3]))
    query = recommender.product_query(product)
    expected = {
        "similar": recommender.recommend_similar(query, 5),
        "complementary": recommender.recommend_complementary(query, 5, per_category=1),
    }

    browser.get(app_url)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".st-key-product input")))
    type_product(browser, product)
    wait_for_grids(browser, wait, {mode: 1 + len(result.items) for mode, result in expected.items()})
    for mode, result in expected.items():
        shown = text_of(browser, f".st-key-{mode}-grid")
        for caption in [logic.query_caption(result.query)] + [logic.item_caption(i) for i in result.items]:
            assert caption in shown, f"{caption!r} not in the {mode} grid:\n{shown}"
    assert_no_traceback(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, ".st-key-app-error")

    # Both grids must be inside the one screenshot.
    browser.execute_script("document.querySelector('.st-key-complementary-grid').scrollIntoView({block: 'end'});")
    visible = browser.execute_script(
        "return ['similar', 'complementary'].map(m => { const r = document.querySelector('.st-key-' + m + '-grid')"
        ".getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; });"
    )
    assert visible == [True, True], "both grids must fit in the window of the screenshot"
    shot = save_screenshot(browser, shots, "app.png")
    record_property("screenshot", str(shot))

    type_product(browser, "987654321")
    wait.until(lambda d: "unknown product" in text_of(d, ".st-key-app-error"), "no error shown for an unknown product id")
    message = "unknown product '987654321': give a row id of the catalog or a product key (signature@x,y,w,h)"
    assert text_of(browser, ".st-key-app-error").strip().endswith(message)
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".st-key-similar-grid"), "the old grids stayed on the page")
    assert_no_traceback(browser)
    save_screenshot(browser, shots, "app-unknown-id.png")


def test_browser_upload_corrupt_then_real_image(app_url, browser, tiny_run, shots):
    """Uploads go through the real upload endpoint: a corrupt file is a readable error, a photo a query."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT, poll_frequency=0.2)
    recommender = Recommender(tiny_run)
    spec = recommender.table.spec(0)
    photo = shots / "outfit.jpg"
    shutil.copyfile(spec.image_path, photo)
    corrupt = shots / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")

    browser.get(app_url)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".st-key-query_mode label")))
    choose_query_mode(browser, "Upload an image")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".st-key-upload input[type='file']")))
    browser.find_element(By.CSS_SELECTOR, ".st-key-upload input[type='file']").send_keys(str(corrupt))
    wait.until(lambda d: "cannot read the uploaded file 'broken.png'" in text_of(d, ".st-key-app-error"), "no error for a corrupt upload")
    assert_no_traceback(browser)

    browser.find_element(By.CSS_SELECTOR, ".st-key-upload input[type='file']").send_keys(str(photo))
    wait.until(lambda d: "Inferred category" in text_of(d, ".st-key-query-info"), "no inferred category for an uploaded photo")
    wait_for_grids(browser, wait, {"similar": 6, "complementary": 6})
    assert not browser.find_elements(By.CSS_SELECTOR, ".st-key-app-error")
    assert_no_traceback(browser)
    save_screenshot(browser, shots, "app-upload.png")
