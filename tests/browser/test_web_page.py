"""The web page at `/`, driven in a real Chromium against the real app (tiny model, CPU).

Needs the Debian `chromium` package (`apt-get install -y chromium`) and the
`playwright` Python package; Playwright's own browser builds are never
downloaded. Each job's prompt is unique so no result cache can answer it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from pathlib import Path

import pytest

from tests.helpers.images import png

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
# A job here takes ~4 s alone; the margin is for a machine busy with other work.
TIMEOUT_MS = 60_000

# 320x256, 9 frames: ~10 ms per denoising step on two CPU cores, then ~2.5 s of
# VAE decode. 100 steps keep "step k of n" on screen for about a second, long
# enough to be caught between animation frames; the whole job takes ~4 s.
PLAYED = {"size": "320x256", "num_frames": "9", "num_inference_steps": "100"}
# ~35 ms per step: 100 steps are ~3.5 s of denoising to cancel in.
CANCELLED = {"size": "640x480", "num_frames": "9", "num_inference_steps": "100"}
# Image to video, small and quick; the 160x120 picture dropped on the page is scaled and cropped to it.
FROM_IMAGE = {"size": "128x96", "num_frames": "9", "num_inference_steps": "4"}
# A DataTransfer holding one file, as the browser builds it for a file dragged in from the desktop.
FILE_TRANSFER = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type}));
  return transfer;
}"""

# True once the progress text reads "Step k of n" with 0 < k < n; k >= n/4 so the
# screenshot shows a bar visibly on its way (all 100 steps are seen one by one).
INTERMEDIATE_STEP = """() => {
  const m = /Step (\\d+) of (\\d+)/.exec(document.getElementById("progress-text").textContent);
  return m !== null && Number(m[1]) >= Number(m[2]) / 4 && Number(m[1]) < Number(m[2]);
}"""
PLAYABLE = "() => { const v = document.getElementById('player'); return v.readyState >= 2 && v.duration > 0; }"
ANY_STEP = """() => /Step \\d+ of \\d+/.test(document.getElementById("progress-text").textContent)"""
# Every text the progress line shows, kept in window.progressTexts.
RECORD_PROGRESS_TEXTS = """() => {
  window.progressTexts = [];
  const el = document.getElementById("progress-text");
  new MutationObserver(() => window.progressTexts.push(el.textContent))
    .observe(el, {childList: true, characterData: true, subtree: true});
}"""
# Every preview image shown, once decoded, with whether the player had a video yet.
RECORD_PREVIEWS = """() => {
  window.previews = [];
  const img = document.getElementById("preview");
  new MutationObserver(() => {
    if (!img.getAttribute("src")) return;
    const playerSrc = document.getElementById("player").getAttribute("src");
    const visible = !document.getElementById("preview-box").hidden;
    const caption = document.getElementById("preview-caption").textContent;
    img.decode().then(() => window.previews.push(
      {width: img.naturalWidth, height: img.naturalHeight, playerSrc, visible, caption}),
      () => {});  // superseded by the next preview before it decoded: the next one counts
  }).observe(img, {attributes: true, attributeFilter: ["src"]});
}"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need `apt-get install -y chromium`")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, serve_url):
    from playwright.sync_api import expect

    context = browser.new_context(base_url=serve_url, viewport={"width": 1000, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    # data:image/ URLs are the previews carried inside progress events, not fetched from anywhere.
    local = (serve_url + "/", "blob:", "data:image/")
    page.on("request", lambda r: r.url.startswith(local) or foreign.append(r.url))
    page.goto("/")
    expect(page.locator("#preset option")).to_have_count(3)
    yield page
    context.close()
    assert script_errors == [], script_errors
    assert foreign == [], f"the page must load nothing from elsewhere: {foreign}"


def fill_job(page, prompt: str, settings: dict[str, str]) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    if not page.locator("#advanced").evaluate("details => details.open"):
        page.get_by_text("Advanced settings").click()
    page.get_by_label("Size (WxH)").fill(settings["size"])
    page.get_by_label("Frames").fill(settings["num_frames"])
    page.get_by_label("Steps").fill(settings["num_inference_steps"])


def unique_prompt(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:8]}"


def test_generate_shows_progress_then_plays_the_video(page):
    from playwright.sync_api import expect

    expect(page.locator("#advanced")).not_to_have_attribute("open", "")  # collapsed by default
    expect(page.get_by_label("Preset")).to_have_value("preview")
    prompt = unique_prompt("a lighthouse at dusk")
    fill_job(page, prompt, PLAYED)
    page.evaluate(RECORD_PROGRESS_TEXTS)
    page.evaluate(RECORD_PREVIEWS)
    page.get_by_role("button", name="Generate").click()

    page.wait_for_function(INTERMEDIATE_STEP)
    progress = page.locator("progress#progress")
    expect(progress).to_have_attribute("aria-valuetext", re.compile(r"^Step \d+ of 100"))
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=DOCS / "screenshot-progress.png", full_page=True)
    video_id = page.locator("#job-id").text_content()
    assert video_id.startswith("video_")

    expect(page.locator("#status")).to_have_text("Completed")
    expect(progress).to_have_js_property("value", 100)
    player = page.locator("video#player")
    expect(player).to_be_visible()
    expect(player).to_have_attribute("src", f"/v1/videos/{video_id}/content")
    expect(player).to_have_attribute("controls", "")
    # The browser decodes the mp4: metadata, a first frame, the right size.
    page.wait_for_function(PLAYABLE)
    assert player.evaluate("v => [v.videoWidth, v.videoHeight]") == [320, 256]
    # And plays to the end (muted: autoplay without a user gesture is allowed only so).
    player.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("() => document.getElementById('player').ended")
    player.evaluate("v => { v.muted = false; }")
    thumbnail = page.locator("img#thumbnail")
    expect(thumbnail).to_have_attribute("src", f"/v1/videos/{video_id}/content?variant=thumbnail")
    page.wait_for_function("() => document.getElementById('thumbnail').naturalWidth === 320")
    expect(page.locator("#job-error")).to_be_hidden()
    # Previews came in while denoising, before the player had a video: 320x256 is a 20x16
    # latent grid and 9 frames are 3 latent frames, shown side by side (60x16 pixels).
    previews = page.evaluate("window.previews")
    assert previews, "no preview was shown"
    assert previews[0]["playerSrc"] is None and previews[0]["visible"], previews[0]
    assert (previews[0]["width"], previews[0]["height"]) == (60, 16), previews[0]
    assert re.fullmatch(r"Preview at step \d+ of 100", previews[0]["caption"]), previews[0]
    expect(page.locator("#preview-box")).to_be_hidden()  # the player replaced it
    texts = page.evaluate("window.progressTexts")
    eta = r"(about \d+ (s|min)|under a second) left"
    assert re.match(rf"Queued, (next in line|\d+ jobs? ahead) · {eta}", texts[0]), texts[:3]
    steps = [int(m.group(1)) for text in texts if (m := re.match(r"Step (\d+) of 100", text))]
    assert steps == sorted(steps) and steps[-1] == 100 and len(set(steps)) > 10, steps
    assert any(re.fullmatch(rf"Step \d+ of 100 · {eta}", text) for text in texts), texts

    row = page.locator(f"#history li[data-id='{video_id}']")
    expect(row).to_have_attribute("data-status", "completed")
    expect(row).to_contain_text(prompt)
    expect(row.get_by_role("link", name="mp4")).to_have_attribute("href", f"/v1/videos/{video_id}/content")
    page.screenshot(path=DOCS / "screenshot-player.png", full_page=True)


def test_cancel_stops_a_running_job(page):
    from playwright.sync_api import expect

    prompt = unique_prompt("a very long storm at sea")
    fill_job(page, prompt, CANCELLED)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(ANY_STEP)
    page.get_by_role("button", name="Cancel").click()

    expect(page.locator("#status")).to_have_text(re.compile("cancelled|failed", re.IGNORECASE))
    expect(page.locator("#job-error")).to_contain_text("cancel")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    video_id = page.locator("#job-id").text_content()
    expect(page.locator(f"#history li[data-id='{video_id}'] .badge")).to_have_text("cancelled")


def test_invalid_input_shows_the_server_message(page):
    from playwright.sync_api import expect

    fill_job(page, "frames that are not 4k+1", {"size": "64x64", "num_frames": "16", "num_inference_steps": "2"})
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("num_frames=16 is not of the form 4k+1")
    expect(page.locator("#job")).to_be_hidden()


def test_api_key_is_kept_and_sent_and_progress_is_polled(page):
    """With a key, every request carries it and the job is followed by polling (no EventSource)."""
    from playwright.sync_api import expect

    key = page.get_by_label("API key")
    key.fill("sk-test-123")
    key.dispatch_event("change")
    page.reload()
    expect(page.get_by_label("API key")).to_have_value("sk-test-123")

    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda r: seen.append((r.url, r.headers.get("authorization"))))
    small = {"size": "64x64", "num_frames": "9", "num_inference_steps": "4"}
    fill_job(page, unique_prompt("a small polled job"), small)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text("Completed")
    # The media comes through fetch (it needs the header too) as blob URLs.
    expect(page.locator("video#player")).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function("() => document.getElementById('player').readyState >= 2")

    api_calls = [(url, auth) for url, auth in seen if "/v1/" in url]
    assert api_calls, seen
    assert all(auth == "Bearer sk-test-123" for _, auth in api_calls), api_calls
    assert not any(url.endswith("/events") for url, _ in api_calls), "a key must switch SSE off"
    assert any(re.search(r"/v1/videos/video_\w+$", url) for url, _ in api_calls), "expected polling"


def test_an_image_is_picked_or_dropped_shown_sent_and_the_video_plays(page, client, tmp_path):
    from playwright.sync_api import expect

    picked = tmp_path / "picked.png"
    picked.write_bytes(png(64, 48, seed=1))
    dropped = png(160, 120, seed=2)
    preview = page.locator("#image-preview")
    caption = page.locator("#image-caption")
    drop_zone = page.locator("#image-drop")
    expect(preview).to_be_hidden()

    # The picker: a thumbnail, the name and the size before anything is sent.
    page.locator("#image").set_input_files(picked)
    expect(preview).to_be_visible()
    expect(caption).to_contain_text("picked.png · 64x48")
    expect(page.locator("#image-thumb")).to_have_attribute("src", re.compile("^blob:"))
    page.wait_for_function("() => document.getElementById('image-thumb').naturalWidth === 64")
    # Removed: nothing shown, and the picker is empty again.
    page.get_by_role("button", name="Remove image").click()
    expect(preview).to_be_hidden()
    expect(page.locator("#image-thumb")).not_to_have_attribute("src", re.compile("."))
    assert page.locator("#image").evaluate("input => input.value") == ""

    # Drag and drop: the zone lights up while a file is over it, and takes the file dropped.
    transfer = page.evaluate_handle(FILE_TRANSFER, [base64.b64encode(dropped).decode(), "dropped.png", "image/png"])
    drop_zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    expect(drop_zone).to_have_class(re.compile(r"\bdragover\b"))
    drop_zone.dispatch_event("drop", {"dataTransfer": transfer})
    expect(drop_zone).not_to_have_class(re.compile(r"\bdragover\b"))
    expect(caption).to_contain_text("dropped.png · 160x120")

    fill_job(page, unique_prompt("the lighthouse beam sweeps over the sea"), FROM_IMAGE)
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/videos")) as posted:
        page.get_by_role("button", name="Generate").click()
    # As the OpenAI SDK sends it: multipart, the picture as the file part input_reference.
    assert posted.value.header_value("content-type").startswith("multipart/form-data; boundary=")
    expect(page.locator("#status")).to_have_text("Completed")
    expect(page.locator("#job-error")).to_be_hidden()
    video_id = page.locator("#job-id").text_content()
    # The service ran the job from the dropped picture (not the removed one): its hash is the job's.
    job = client.get(f"/v1/videos/{video_id}").json()
    assert job["input_reference_sha256"] == hashlib.sha256(dropped).hexdigest(), job

    player = page.locator("video#player")
    expect(player).to_have_attribute("src", f"/v1/videos/{video_id}/content")
    page.wait_for_function(PLAYABLE)
    assert player.evaluate("v => [v.videoWidth, v.videoHeight]") == [128, 96]
    player.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function("() => document.getElementById('player').ended")
    expect(page.locator(f"#history li[data-id='{video_id}'] .meta")).to_contain_text("from an image")
    # Like the prompt, the picture stays chosen for the next job.
    expect(preview).to_be_visible()
    page.screenshot(path=DOCS / "screenshot-image.png", full_page=True)


def test_an_image_the_server_refuses_is_shown_with_its_message(page):
    from playwright.sync_api import expect

    not_a_picture = {"name": "notes.png", "mimeType": "image/png", "buffer": b"plain text, not a picture"}
    page.locator("#image").set_input_files(not_a_picture)
    # The page sends it anyway: what the model can start from is the server's to judge.
    expect(page.locator("#image-caption")).to_contain_text("notes.png · no preview")
    fill_job(page, unique_prompt("a picture that is not one"), FROM_IMAGE)
    page.get_by_role("button", name="Generate").click()

    error = page.locator("#form-error")
    expect(error).to_contain_text("input_reference is not a PNG, JPEG or WebP image")
    expect(page.locator("#image-drop")).to_have_class(re.compile(r"\binvalid\b"))
    expect(page.locator("#image")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job")).to_be_hidden()
    # Removing the picture clears the mark; the form is text to video again.
    page.get_by_role("button", name="Remove image").click()
    expect(page.locator("#image-drop")).not_to_have_class(re.compile(r"\binvalid\b"))
    expect(page.locator("#image")).not_to_have_attribute("aria-invalid", "true")
