"""The web debug console in a real headless browser (Debian's Chromium through its chromedriver, driven by
selenium) against a real Quarry gRPC server: the page loads, a query renders the branch columns, the fused
and ranked lists and map markers on the Natural Earth countries, a bad request shows the server's own
error message, branch toggles and the Recommend tab (the user's recent events) work. Screenshots are kept
as test artifacts in var/test-artifacts/ (or $QUARRY_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from quarry.client import channel
from quarry.console import assets
from quarry.console.server import Bridge, ConsoleServer

pytestmark = pytest.mark.integration

ARTIFACTS = Path(
    os.environ.get("QUARRY_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "var/test-artifacts")
)


@pytest.fixture(scope="module")
def console(server: str) -> Iterator[str]:
    try:
        where = assets.require() if not assets.missing() else (assets.install(), assets.require())[1]
    except (OSError, ValueError) as exc:
        pytest.skip(f"the console's browser files cannot be installed (npm registry unreachable?): {exc}")
    srv = ConsoleServer(
        Bridge(channel(server), server, where, collections=("geonames", "movielens")), "127.0.0.1", 0
    ).start()
    try:
        yield srv.url
    finally:
        srv.close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bridge_speaks_protobuf_json_and_passes_errors_through(console: str) -> None:
    status, body = _post(console + "api/search", b'{"collection": "geonames", "query": "zurich", "topK": 3}')
    assert status == 200 and len(body["hits"]) == 3 and body["debug"]["fused"]  # debug is always on
    assert body["hits"][0]["title"].startswith("Z")
    status, body = _post(console + "api/search", b'{"collection": "geonames", "query": "x", "radius_m": 5}')
    assert status == 400 and body["error"]["code"] == "INVALID_ARGUMENT"
    assert "radius_m is set but location is missing" in body["error"]["message"]
    status, body = _post(console + "api/search", b'{"collection": "geonames", "no_such_field": 1}')
    assert status == 400 and "not a valid SearchRequest" in body["error"]["message"]
    status, body = _post(console + "api/search", b'{"collection": "nope", "query": "x"}')
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = _post(console + "api/nothing", b"{}")
    assert status == 400 and "no such API method" in body["error"]["message"]
    with urllib.request.urlopen(console + "vendor/leaflet.js", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/javascript") and b"Leaflet" in r.read(2000)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(console + "vendor/../../etc/passwd", timeout=10)
    assert err.value.code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "no system Chromium + chromedriver (Debian: apt-get install chromium chromium-driver; "
            "scripts/test.sh does it when run as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1500"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv: Any, predicate: Any, what: str, timeout: float = 20.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout).until(lambda d: predicate(d))
    except Exception as exc:  # selenium's TimeoutException: say what never appeared, with the page's logs
        logs = drv.get_log("browser") if hasattr(drv, "get_log") else []
        raise AssertionError(f"timed out waiting for {what}; browser log: {logs}") from exc


def _fill(drv: Any, **fields: str) -> None:
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        box = drv.find_element(By.ID, name)
        box.clear()
        if value:
            box.send_keys(value)


def _run(drv: Any) -> None:
    from selenium.webdriver.common.by import By

    before = drv.find_element(By.TAG_NAME, "body").get_attribute("data-answered")
    drv.find_element(By.ID, "go").click()
    _wait(
        drv,
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-answered") not in (None, before)
            or d.find_element(By.ID, "error").is_displayed()
        ),
        "an answer or an error",
    )


def _shot(drv: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / name
    drv.save_screenshot(str(out))
    assert out.stat().st_size > 10_000
    return out


def test_search_in_a_real_browser(console: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console)
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "the page")
    _fill(browser, collection="geonames", q="paris", lat="48.85", lon="2.35", topk="10")
    _run(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    cols = {c.get_attribute("data-branch"): c for c in browser.find_elements(By.CSS_SELECTOR, ".branch-col")}
    assert {"inverted", "geo"} <= set(cols)
    assert "Paris" in cols["inverted"].find_element(By.CSS_SELECTOR, "li.cand .title").text
    assert len(cols["geo"].find_elements(By.CSS_SELECTOR, "li.cand")) >= 10
    hits = browser.find_elements(By.CSS_SELECTOR, "#ranked .hit")
    assert len(hits) == 10 and "Paris" in hits[0].text and "fused #1" in hits[0].text
    assert browser.find_elements(By.CSS_SELECTOR, "#fused li.cand")
    # The map: Natural Earth countries drawn from world-atlas, a marker per located hit, the query point.
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "path.hit-marker"), "hit markers")
    assert len(browser.find_elements(By.CSS_SELECTOR, "path.hit-marker")) == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "path.query-marker")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map .leaflet-overlay-pane path")) > 150  # countries
    # Chinese text round-trips through the page and the bridge.
    _fill(browser, q="上海", lat="", lon="")
    _run(browser)
    assert "Shanghai" in browser.find_element(By.CSS_SELECTOR, "#ranked .hit").text
    _fill(browser, q="springfield", lat="39.8", lon="-89.65", radius="300000", categories="US")
    _run(browser)
    time.sleep(0.5)  # let the map finish fitting its bounds before the picture
    _shot(browser, "console-geonames.png")
    # Branches off: only the geo column, every hit found by geo.
    browser.find_element(By.ID, "branch-inverted").click()
    _run(browser)
    assert [
        c.get_attribute("data-branch") for c in browser.find_elements(By.CSS_SELECTOR, ".branch-col")
    ] == ["geo"]
    browser.find_element(By.ID, "branch-inverted").click()


def test_bad_request_shows_the_servers_message(console: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console)
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "the page")
    _fill(browser, collection="geonames", q="paris", lat="", lon="", radius="1000")
    _run(browser)
    err = browser.find_element(By.ID, "error")
    assert err.is_displayed()
    assert err.text == "INVALID_ARGUMENT: radius_m is set but location is missing"
    _fill(browser, collection="no-such-collection", radius="")
    _run(browser)
    assert browser.find_element(By.ID, "error").text.startswith("NOT_FOUND:")
    assert not browser.find_elements(By.CSS_SELECTOR, "#ranked .hit")


def test_recommend_tab_shows_the_users_recent_events(server: str, console: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    user = f"console-{time.time_ns()}"
    req = pb.LogEventsRequest(collection="movielens")
    for i, item in enumerate(["50", "172", "181", "1"]):  # Star Wars, Empire, Return of the Jedi, Toy Story
        req.events.add(event_id=f"c{i}", user_id=user, item_id=item, type="rating", weight=5.0, ts=1.7e9 + i)
    with grpc.insecure_channel(server) as ch:
        assert search_pb2_grpc.SearchServiceStub(ch).LogEvents(req, timeout=10).accepted == 4
    browser.get(console + "?mode=recommend")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "the page")
    assert not browser.find_element(By.ID, "q").is_displayed()  # Recommend takes no text
    _fill(browser, collection="movielens", user=user, topk="10", lat="", lon="", radius="")
    _run(browser)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "user-panel").is_displayed()
    recent = browser.find_element(By.ID, "recent").text
    assert "Toy Story" in recent and "Star Wars" in recent
    assert "4 events" in browser.find_element(By.ID, "user-counters").text
    cols = {c.get_attribute("data-branch"): c for c in browser.find_elements(By.CSS_SELECTOR, ".branch-col")}
    assert {"behavior", "popular"} <= set(cols)
    assert cols["behavior"].find_elements(By.CSS_SELECTOR, "li.cand")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ranked .hit")) == 10
    assert not browser.find_element(By.ID, "map-wrap").is_displayed()  # films have no coordinates
    _shot(browser, "console-movielens.png")


def test_a_dead_retriever_is_one_clear_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    srv = ConsoleServer(Bridge(channel(target), target, tmp_path, timeout_s=2.0)).start()
    try:
        status, body = _post(srv.url + "api/search", b'{"collection": "geonames", "query": "x"}')
    finally:
        srv.close()
    assert status == 502 and body["error"]["code"] == "UNAVAILABLE"
    assert body["error"]["message"].startswith(f"the retriever at {target} is unavailable")


def test_console_without_its_browser_files_says_how_to_install_them(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    res = CliRunner().invoke(main, ["console", "--port", "0"], env={"QUARRY_CONSOLE_ASSETS": str(tmp_path)})
    assert res.exit_code == 1
    assert "run `quarry console install`" in res.output and "Traceback" not in res.output
