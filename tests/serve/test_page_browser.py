"""The page in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

One ``delf_serve`` server per module, started through the installed console script with
no index (the bundled demo photos, indexed into a temporary cache on start) and a small,
fast config (default model, photos capped at 384 px, 3 scales). The test walks what a
person does: remove a photo from the gallery, upload it as a query and see its place
ranked first and recognised, open the match picture, add a labelled photo and remove it,
and get a clear error for a corrupt upload. With $DELF_SERVE_SCREENSHOTS set to a folder,
the screenshots (docs/images/serve_*.png) are written there as small 8-bit PNGs.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest
from PIL import Image

from conftest import BUNDLED_IMAGES
from conftest import installed_script
from conftest import tool_env

pytestmark = pytest.mark.slow

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]
FAST_CONFIG = [
  "--config_override=max_image_size=384",
  "--config_override=image_scales=0.5,0.7071,1.0",
]
TIMEOUT_MS = 60_000


def start_server(cache_dir: pathlib.Path, *flags: str, timeout: float = 300):
  """Starts delf_serve on a free port; returns (process, base URL) once it serves."""
  process = subprocess.Popen(
    [installed_script("delf_serve"), "--port=0", f"--cache_dir={cache_dir}", *FAST_CONFIG, *flags],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    stdin=subprocess.DEVNULL,
    text=True,
    env=tool_env(),
  )
  deadline, lines = time.time() + timeout, []
  assert process.stdout is not None
  for line in process.stdout:
    lines.append(line)
    found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
    if found:
      return process, found[1], lines
    if time.time() > deadline:
      break
  process.kill()
  raise AssertionError("delf_serve did not start:\n" + "".join(lines))


def stop_server(process: subprocess.Popen) -> str:
  """Stops the server (SIGTERM: under a shell that ignores SIGINT its children do too);
  returns the rest of its output."""
  process.terminate()
  try:
    rest, _ = process.communicate(timeout=30)
  except subprocess.TimeoutExpired:
    process.kill()
    rest, _ = process.communicate()
  return rest or ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  cache = tmp_path_factory.mktemp("serve_cache")
  process, url, lines = start_server(cache)
  yield {"url": url, "cache": cache, "start": "".join(lines)}
  rest = stop_server(process)
  # SIGTERM stops it like Ctrl-C: one line, its temporary folder removed, no traceback.
  assert rest.rstrip().endswith("stopped (SIGTERM)") and "Traceback" not in rest, rest
  assert process.returncode == 128 + 15


@pytest.fixture(scope="module")
def browser():
  if not CHROMIUM.is_file():
    # .ci/run installs the browser and sets DELF_RET_REQUIRE_BROWSER, so CI never skips these.
    message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    if os.environ.get("DELF_RET_REQUIRE_BROWSER"):
      pytest.fail(message)
    pytest.skip(message)
  from playwright.sync_api import sync_playwright

  with sync_playwright() as playwright:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture()
def page(browser, server):
  context = browser.new_context(viewport={"width": 1180, "height": 860})
  page = context.new_page()
  page.set_default_timeout(TIMEOUT_MS)
  page.goto(server["url"])
  page.wait_for_selector("#photos .photo-card")
  yield page
  context.close()


def screenshot(page, name: str, tmp_path: pathlib.Path, **options) -> pathlib.Path:
  """A screenshot as an 8-bit PNG (small); copied to $DELF_SERVE_SCREENSHOTS when set."""
  image = Image.open(io.BytesIO(page.screenshot(**options))).convert("RGB")
  path = tmp_path / name
  image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
  assert path.stat().st_size < 300_000, f"{name}: {path.stat().st_size} bytes"
  target = os.environ.get("DELF_SERVE_SCREENSHOTS")
  if target:
    shutil.copy(path, pathlib.Path(target) / name)
  return path


def wait_until_loaded(page, selector: str, timeout: float = 60) -> None:
  """Waits for an <img> to load (polled: the page's content policy forbids eval, which
  Playwright's wait_for_function of an expression needs)."""
  deadline = time.time() + timeout
  while not page.eval_on_selector(selector, "image => image.complete && image.naturalWidth > 0"):
    assert time.time() < deadline, f"{selector} did not load"
    time.sleep(0.05)


def card_ids(page, selector: str) -> list[str]:
  return page.eval_on_selector_all(selector, "cards => cards.map(card => card.dataset.id)")


def remove_from_gallery(page, image_id: str) -> None:
  page.fill("#gallery-filter", image_id)
  page.click(f'#photos .photo-card[data-id="{image_id}"] .remove-button')
  page.wait_for_selector(f"#gallery-status:has-text('removed {image_id}')")
  page.fill("#gallery-filter", "")
  assert image_id not in card_ids(page, "#photos .photo-card")


def test_upload_query_match_picture_and_gallery(page, server, tmp_path):
  """The walk of the module docstring, in one page (each step needs the one before)."""
  assert "demo photos: indexing the bundled photos" in server["start"]
  assert len(card_ids(page, "#photos .photo-card")) == 20
  # campus_building_2 leaves the gallery, then comes as a query: its place must come first.
  remove_from_gallery(page, "campus_building_2")
  page.set_input_files("#query-file", str(BUNDLED_IMAGES / "campus_building_2.jpg"))
  page.click("#search")
  page.wait_for_selector("#results .result-card")
  first = page.locator("#results .result-card").first
  assert first.get_attribute("data-id") == "campus_building_1"
  assert "verified" in (first.get_attribute("class") or "")
  assert "campus_building" in first.inner_text()
  assert page.inner_text("#recognition").startswith("Recognised: campus_building")
  assert page.is_hidden("#error")
  screenshot(page, "serve_results.png", tmp_path)

  first.click()
  page.wait_for_selector("#match-image:not([hidden])")
  width = page.eval_on_selector("#match-image", "image => image.naturalWidth")
  assert width > 600
  assert "RANSAC inliers" in page.inner_text("#match-caption")
  screenshot(page, "serve_match.png", tmp_path)
  page.click("#match-close")

  # A labelled photo joins the gallery (a new id: the demo's feature file keeps the old one).
  page.set_input_files("#gallery-file", str(BUNDLED_IMAGES / "campus_building_2.jpg"))
  page.fill("#gallery-label", "campus building (mine)")
  page.click("#gallery-add")
  page.wait_for_selector("#gallery-status:has-text('added campus_building_2_2')")
  added = page.locator('#photos .photo-card[data-id="campus_building_2_2"]')
  assert "campus building (mine)" in added.inner_text()
  stored = list(pathlib.Path(server["cache"]).glob("demo-*/index/gallery_photos/*"))
  assert [path.name for path in stored] == ["campus_building_2_2.jpg"]
  remove_from_gallery(page, "campus_building_2_2")
  assert not list(pathlib.Path(server["cache"]).glob("demo-*/index/gallery_photos/*"))


def test_corrupt_upload_gets_a_clear_error_on_the_page(page):
  page.set_input_files(
    "#query-file",
    files=[
      {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff\xe0 not a jpeg"}
    ],
  )
  page.click("#search")
  page.wait_for_selector("#error:not([hidden])")
  message = page.inner_text("#error")
  assert "broken.jpg" in message and ("not an image" in message or "corrupt" in message)
  assert "Traceback" not in page.content()
  assert page.locator("#results .result-card").count() == 0


def test_query_by_indexed_photo_with_a_box_leaves_it_out_of_its_results(page):
  page.fill("#gallery-filter", "roofs_2")
  page.click('#photos .photo-card[data-id="roofs_2"] .query-button')
  wait_until_loaded(page, "#preview-image")
  frame = page.locator("#preview-image").bounding_box()
  assert frame is not None
  page.mouse.move(frame["x"] + 0.1 * frame["width"], frame["y"] + 0.1 * frame["height"])
  page.mouse.down()
  page.mouse.move(frame["x"] + 0.9 * frame["width"], frame["y"] + 0.8 * frame["height"], steps=5)
  page.mouse.up()
  assert page.is_visible("#box") and page.is_enabled("#clear-box")
  page.click("#search")
  page.wait_for_selector("#results .result-card")
  ids = card_ids(page, "#results .result-card")
  assert ids[0] == "roofs_1" and "roofs_2" not in ids
