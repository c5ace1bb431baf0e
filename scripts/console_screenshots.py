"""Make docs/console-geonames.png and docs/console-movielens.png: the web console in headless Chromium
against a real Quarry server on loopback.

- GeoNames: the demo's `places` collection (cities15000 with MiniLM vectors and SYNTHETIC visit events;
  built by README's first command, `quarry demo`, into var/snapshots/places, or here if missing), a Search
  for "paris" near Paris by one of the synthetic users, so all four Search branches answer.
- MovieLens-100K: a ranker trained by `quarry rank train` (into var/console-shots/movielens), served with
  its model, and a Recommend for a user who rated four films (logged through LogEvents into Redis).

Needs Redis on 127.0.0.1:6379, Debian's chromium + chromium-driver and `quarry console install`.
Usage: .venv/bin/python scripts/console_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import threading
import time
from pathlib import Path

import grpc

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from quarry.client import channel
from quarry.console import assets
from quarry.console.server import Bridge, ConsoleServer

ROOT = Path(__file__).resolve().parent.parent


def _serve(places: Path, movielens: Path, model: Path) -> tuple[str, asyncio.AbstractEventLoop, object]:
    from retriever.api.server import QuarryServer, load_collections
    from retriever.settings import load_settings

    settings = load_settings()
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"port": 0}),
            "collections": {**settings.collections, "movielens": {"ranker": {"model_path": str(model)}}},
        }
    )
    server = QuarryServer(settings, load_collections(settings, [places, movielens]))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=120)
    return f"127.0.0.1:{port}", loop, server


def _driver() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise SystemExit(
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1560"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def _shoot(drv: object, url: str, out: Path, open_features: bool = False) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(url)  # type: ignore[attr-defined]
    WebDriverWait(drv, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answered"))
    err = drv.find_element(By.ID, "error")  # type: ignore[attr-defined]
    if err.is_displayed():
        raise SystemExit(f"the console showed an error: {err.text}")
    if open_features:
        drv.execute_script("document.querySelector('#ranked details')?.setAttribute('open', '')")  # type: ignore[attr-defined]
    time.sleep(1.0)  # the map fits its bounds with an animation
    drv.save_screenshot(str(out))  # type: ignore[attr-defined]
    from PIL import Image  # matplotlib's dependency (dev extra): 256 colours keep a UI picture sharp

    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()

    from quarry.demo import _ensure_places
    from quarry.training import train_movielens

    places = ROOT / "var/snapshots/places"
    _ensure_places(places, rebuild=False)
    ml = ROOT / "var/console-shots/movielens"
    if not (ml / "model.onnx").is_file():
        train_movielens(ml, data_dir=ml)
    if assets.missing():
        assets.install()
    target, _loop, _server = _serve(places, ml / "train-snapshot", ml / "model.onnx")

    user = f"console-demo-{int(time.time())}"
    with grpc.insecure_channel(target) as ch:
        stub = search_pb2_grpc.SearchServiceStub(ch)
        req = pb.LogEventsRequest(collection="movielens")
        for i, item in enumerate(
            ["50", "172", "181", "1"]
        ):  # Star Wars, Empire, Return of the Jedi, Toy Story
            req.events.add(event_id=f"s{i}", user_id=user, item_id=item, type="rating", weight=5.0)
        stub.LogEvents(req, timeout=10)
    from common.snapshot import open_snapshot

    behavior = _server.registry.get("places").behavior  # type: ignore[attr-defined]
    visitor = behavior.sample_users(1)[0] if behavior is not None else ""
    print(f"serving {open_snapshot(places).snapshot_version} and movielens on {target}; visitor {visitor!r}")

    console = ConsoleServer(
        Bridge(channel(target), target, assets.require(), collections=("places", "movielens"))
    )
    console.start()
    drv = _driver()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        _shoot(
            drv,
            f"{console.url}?collection=places&q=paris&lat=48.8566&lon=2.3522&user={visitor}&topk=10&run=1",
            args.out / "console-geonames.png",
        )
        _shoot(
            drv,
            f"{console.url}?mode=recommend&collection=movielens&user={user}&topk=10&run=1",
            args.out / "console-movielens.png",
            open_features=True,
        )
    finally:
        drv.quit()  # type: ignore[attr-defined]
        console.close()


if __name__ == "__main__":
    main()
