"""The page at GET / of `cifar100 serve`, in a real headless Chromium against a real server on a
tiny trained model: what a person sees for their images equals `cifar100 predict --json`.

Uploads a real CIFAR-10 JPEG where ../shared/data has them (a synthetic image elsewhere).
Screenshots go to the test's tmp_path and to /tmp/page-desktop.png and /tmp/page-phone.png
(and /tmp/page-verdict-desktop.png, /tmp/page-verdict-phone.png: "none of these" and a heat map).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifar100
from cifar100 import cli
from cifar100.runtime.checkpoint import Checkpoint
from headless_chromium import launch, needs_chromium
from serve_server import multipart, running_server
from synthetic_cifar import make_cifar10_archive

REAL_JPEGS = Path(__file__).parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
# (class folder, file) of the real test images uploaded, where they exist
PICKS = [("cat", "0001"), ("ship", "0002"), ("dog", "0003"), ("airplane", "0004"),
         ("frog", "0005"), ("truck", "0006")]  # fmt: skip
TINY = ["--preset", "scratch", "--dataset", "cifar10", "--backbone", "efficientnet_lite0",
        "--set", "model.resize=1", "--set", "train.batch_size=32", "--epochs", "1",
        "--no-progress"]  # fmt: skip
LIMIT_MB = 0.02  # the server's --max-request-mb: small, so that a 413 is cheap to provoke

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def model(tmp_path_factory, images) -> Path:
    """A run directory, trained and evaluated on synthetic CIFAR-10 in a few seconds, whose
    "none of these" threshold lies among the uploaded images' OOD scores: half of them are."""
    root = tmp_path_factory.mktemp("page-model")
    archive = make_cifar10_archive(root / "c10.tar.gz", 64, 32)
    out, cache = root / "run", root / "cache"
    argv = ["train", *TINY, "--data", str(archive), "--cache-dir", str(cache), "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "evaluation.json").exists()
    loaded = cifar100.load(out, device="cpu")
    scores = sorted(p.ood_score for p in loaded.predict([str(i) for i in images]))
    middle = len(scores) // 2
    for path in (out / "best.pt", out / "last.pt"):
        if path.exists():
            ckpt = Checkpoint.load(path)
            threshold = (scores[middle - 1] + scores[middle]) / 2
            ckpt.info.ood = {**(ckpt.info.ood or {}), "threshold": threshold, "method": "entropy"}
            ckpt.save(path)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Photos to upload: real CIFAR-10 test JPEGs (extracted here, not kept in the repo)."""
    root = tmp_path_factory.mktemp("page-images")
    paths = []
    if REAL_JPEGS.exists():
        wanted = {f"cifar10-jpeg/test/{c}/{n}.jpg": f"{c}-{n}.jpg" for c, n in PICKS}
        with tarfile.open(REAL_JPEGS) as tar:
            for member in tar:
                if member.name in wanted:
                    (root / wanted[member.name]).write_bytes(tar.extractfile(member).read())
                    paths.append(root / wanted[member.name])
        assert len(paths) == len(PICKS), "cifar10-jpeg.tar.gz lacks some of the picked files"
    else:
        rng = np.random.default_rng(0)
        for c, n in PICKS:
            pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
            Image.fromarray(pixels).save(root / f"{c}-{n}.jpg", quality=90)
            paths.append(root / f"{c}-{n}.jpg")
    return paths


@pytest.fixture(scope="module")
def server(model):
    with running_server(model, "--max-request-mb", str(LIMIT_MB)) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with playwright.sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@dataclass
class Visit:
    page: object
    origin: str
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def check_clean(self, failed_statuses: tuple[int, ...] = ()) -> None:
        """No request left this server, and no error but the browser's own note of each
        deliberately refused upload ("Failed to load resource: ... status of 422 ...")."""
        elsewhere = [u for u in self.requests if not u.startswith((self.origin, "blob:", "data:"))]
        assert elsewhere == []
        refused = re.compile(r"Failed to load resource: the server responded with a status of "
                             rf"({'|'.join(map(str, failed_statuses)) or 'none'}) ")  # fmt: skip
        assert [e for e in self.errors if not refused.match(e)] == []

    def results(self) -> dict[str, dict]:
        """Each result on the page, settled, by file name: its state, bars, error and time."""
        self.page.wait_for_function(
            "() => document.querySelectorAll('#results li.result').length > 0 && "
            "[...document.querySelectorAll('#results li.result')].every(li => "
            "li.dataset.state === 'done' || li.dataset.state === 'error')",
            timeout=60_000,
        )
        return {
            r["name"]: r
            for r in self.page.eval_on_selector_all(
                "#results li.result",
                """items => items.map(li => ({
                    name: li.dataset.name, state: li.dataset.state, ms: li.dataset.ms,
                    time: li.querySelector('.time').textContent,
                    bars: [...li.querySelectorAll('.bars li')].map(b => [b.dataset.class,
                        b.dataset.probability, b.querySelector('.pct').textContent]),
                    error: li.querySelector('.error')?.textContent ?? null,
                    status: li.querySelector('.error')?.dataset.status ?? null,
                    thumb: li.querySelector('img.thumb')?.naturalWidth ?? 0,
                    alt: li.querySelector('img.thumb')?.alt ?? null,
                    verdict: li.dataset.verdict ?? null,
                    said: li.querySelector('.verdict')?.innerText ?? null,
                    greyed: li.querySelector('.bars.guesses') !== null,
                }))""",
            )
        }


@pytest.fixture
def visit(browser, server):
    def open_page(width: int = 1280, height: int = 900) -> Visit:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        v = Visit(page, server.url.rstrip("/"))
        page.on("console", lambda m: v.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: v.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: v.requests.append(r.url))
        page.goto(server.url)
        page.wait_for_selector("#facts [data-fact=backbone]")  # the card arrived from /model
        return v

    contexts = []
    yield open_page
    for c in contexts:
        c.close()


def cli_predictions(model: Path, files: list[Path]) -> list[list]:
    """`cifar100 predict MODEL FILES --json`, as a separate process like the server, per file:
    [[class, probability], ...] in the printed order."""
    done = subprocess.run(
        [sys.executable, "-m", "cifar100", "predict", str(model), *map(str, files), "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    return [[[p["class"], p["probability"]] for p in r["predictions"]] for r in rows]


@pytest.mark.slow
def test_a_photo_gets_the_top5_that_cifar100_predict_prints(visit, model, images, server):
    v = visit()
    photo = images[0]
    v.page.set_input_files("#files", str(photo))
    result = v.results()[photo.name]
    [want] = cli_predictions(model, [photo])
    assert result["state"] == "done" and len(result["bars"]) == 5
    # Same classes in the same order, and the probabilities exactly as the CLI rounds them.
    assert [[c, float(p)] for c, p, _ in result["bars"]] == want
    assert [shown for *_, shown in result["bars"]] == [f"{p * 100:.1f}%" for _, p in want]
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", result["time"]) and float(result["ms"]) > 0
    assert result["thumb"] == 32 and photo.name in result["alt"]  # the local file, shown
    v.check_clean()


@pytest.mark.slow
def test_the_model_card_says_what_the_model_is(visit, model, server):
    v = visit()
    card = server.json("model")
    facts = dict(v.page.eval_on_selector_all(
        "#facts [data-fact]", "fs => fs.map(f => [f.dataset.fact, f.querySelector('dd').innerText])"
    ))  # fmt: skip
    evaluation = json.loads((model / "evaluation.json").read_text())
    assert facts["backbone"] == "efficientnet_lite0" and facts["dataset"] == "cifar10"
    assert facts["classes"].startswith("10") and facts["image-size"] == "32 × 32 px"
    assert facts["accuracy"] == (
        f"top-1 {evaluation['top1'] * 100:.1f}% · top-5 {evaluation['top5'] * 100:.1f}%"
    )
    assert card["trained_at"][:4] in facts["trained"] and "1 epoch" in facts["trained"]
    assert facts["runtime"] == f"torch on {card['device']}"
    rule = card["ood_rule"]
    assert (
        facts["ood"]
        == f"uncertainty above {rule['threshold']:.2f} (95.0% of validation images pass)"
    )
    assert v.page.inner_text("#summary") == "No images yet." and not v.page.is_visible("#clear")
    v.check_clean()

    # A model never evaluated says so (its card, from the real one, through the page's fetch).
    v = visit()
    unevaluated = json.dumps({**card, "test_top1": None, "test_top5": None})
    v.page.route("**/model", lambda route: route.fulfill(json=json.loads(unevaluated)))
    v.page.reload()
    v.page.wait_for_selector("#facts [data-fact=backbone]")
    assert v.page.inner_text("[data-fact=accuracy] dd") == "not measured on this file"
    v = visit()  # nor a "none of these" rule: said subtly
    without = json.dumps({**card, "ood_rule": None, "temperature": None})
    v.page.route("**/model", lambda route: route.fulfill(json=json.loads(without)))
    v.page.reload()
    v.page.wait_for_selector("#facts [data-fact=backbone]")
    assert v.page.inner_text("[data-fact=ood] dd") == "not available for this file"
    v.check_clean()


@pytest.mark.slow
def test_rejected_files_show_the_servers_message_in_place(visit, images, server, tmp_path):
    v = visit()
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    big = tmp_path / "big.png"  # noise does not compress: over the 0.02 MB limit
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), np.uint8)
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > LIMIT_MB * (1 << 20)
    v.page.set_input_files("#files", [str(images[1]), str(text), str(big)])
    results = v.results()

    body, content_type = multipart([(text.name, text.read_bytes())])
    status, answer, _ = server.post("predict", body, content_type)
    assert status == 422
    assert results[text.name]["state"] == "error" and results[text.name]["status"] == "422"
    assert results[text.name]["error"].endswith(json.loads(answer)["error"])
    assert results[text.name]["bars"] == []
    assert results[big.name]["status"] == "413"
    assert "over this server's limit" in results[big.name]["error"]
    assert results[images[1].name]["state"] == "done"  # the good one is unharmed
    v.check_clean(failed_statuses=(413, 422))


@pytest.mark.slow
def test_a_busy_server_then_a_bare_error_then_a_retry_that_works(visit, images):
    v = visit()
    answers = iter([
        {"status": 503, "headers": {"Retry-After": "2"},
         "json": {"error": "busy: 300 images waiting; retry in 2 s"}},
        {"status": 502, "body": "<html>proxy trouble</html>", "content_type": "text/html"},
    ])  # fmt: skip

    def predict(route):
        fake = next(answers, None)
        route.fulfill(**fake) if fake else route.continue_()

    v.page.route("**/predict*", predict)
    photo = images[2]
    v.page.set_input_files("#files", str(photo))
    first = v.results()[photo.name]
    assert first["status"] == "503" and "busy: 300 images waiting; retry in 2 s" in first["error"]
    v.page.click("li.result button:text('Try again')")
    second = v.results()[photo.name]
    assert second["status"] == "502" and "HTTP 502" in second["error"]  # no JSON: the status
    v.page.click("li.result button:text('Try again')")
    assert v.results()[photo.name]["state"] == "done"
    v.check_clean(failed_statuses=(502, 503))


@pytest.mark.slow
def test_several_files_chosen_dropped_or_pasted_each_get_their_own_request(
    visit, model, images, server
):
    v = visit()
    chosen, dropped, pasted = images[:4], images[4], images[5]
    v.page.set_input_files("#files", [str(p) for p in chosen])
    encoded = base64.b64encode(dropped.read_bytes()).decode()
    v.page.evaluate(  # what a drag from the file manager delivers
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop'])
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true,
                                                        cancelable: true}));
        }""",
        [encoded, dropped.name],
    )
    v.page.evaluate(  # what Ctrl-V of a copied image delivers: a file named image.png
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
            document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt,
                                                                bubbles: true}));
        }""",
        base64.b64encode(_png(pasted)).decode(),
    )
    results = v.results()
    assert list(results) == [*(p.name for p in chosen), dropped.name, "pasted-1.png"]
    want = cli_predictions(model, [*chosen, dropped])
    for photo, expected in zip([*chosen, dropped], want):
        got = results[photo.name]
        assert got["state"] == "done" and [c for c, *_ in got["bars"]] == [c for c, _ in expected]
        # The server batched concurrent requests: other batch sizes, other last digits.
        assert np.allclose([float(p) for _, p, _ in got["bars"]], [p for _, p in expected],
                           atol=1e-5)  # fmt: skip
    assert results["pasted-1.png"]["state"] == "done"
    posts = [u for u in v.requests if "/predict" in u]
    assert len(posts) == len(images)  # one request per image
    assert v.page.inner_text("#summary") == f"{len(images)} images: {len(images)} classified"
    v.check_clean()


@pytest.mark.slow
def test_desktop_and_phone_width(visit, images, tmp_path):
    """Screenshots of both, no horizontal scrolling at 375 px, touch-sized controls, and the
    file chooser reached from the keyboard."""
    long_name = tmp_path / ("a-photo-with-a-very-long-file-name-without-spaces" * 2 + ".jpg")
    shutil.copy(images[0], long_name)
    text = tmp_path / "readme.txt"
    text.write_text("not an image")
    uploads = [str(p) for p in [*images[:3], long_name, text]]
    for name, (width, height) in {"desktop": (1280, 900), "phone": (375, 740)}.items():
        v = visit(width, height)
        v.page.set_input_files("#files", uploads)
        assert len(v.results()) == len(uploads)
        overflow = v.page.evaluate("document.scrollingElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{name}: {overflow} px of horizontal scrolling"
        shot = tmp_path / f"page-{name}.png"
        v.page.screenshot(path=str(shot), full_page=True)
        shutil.copy(shot, f"/tmp/page-{name}.png")
        if name == "phone":
            for selector in ("label[for=files]", "#clear", "#facts summary"):
                box = v.page.locator(selector).first.bounding_box()
                assert box and box["height"] >= 24, (selector, box)
            assert v.page.locator("label[for=files]").bounding_box()["height"] >= 44
        v.check_clean(failed_statuses=(422,))

    # Keyboard: Tab reaches the (visually hidden) file input, which is labelled.
    for _ in range(10):
        v.page.keyboard.press("Tab")
        if v.page.evaluate("document.activeElement.id") == "files":
            break
    else:
        pytest.fail("Tab never reached the file chooser")
    assert v.page.evaluate("document.getElementById('files').labels[0].textContent").strip()
    assert v.page.get_attribute("#results", "aria-live") == "polite"


def _png(path: Path) -> bytes:
    """The image re-encoded as a PNG, as a clipboard holds a copied image."""
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_names_are_shown_as_text_with_their_controls_visible(visit, server, images, tmp_path):
    from cifar100.display_text import visible

    classes = ["abc\u202edcba.exe", "$\\undefinedcmd{x}$ <b>math</b>", "猫咪", "قطة", "L" * 250]
    v = visit()
    card = {**server.json("model"), "classes": classes, "num_classes": len(classes)}
    v.page.route("**/model", lambda route: route.fulfill(json=card))
    answer = [{"predictions": [{"class": c, "probability": 0.2} for c in classes]}]
    v.page.route("**/predict*", lambda route: route.fulfill(json=answer))
    v.page.reload()
    v.page.wait_for_selector("#facts [data-fact=backbone]")
    shown = v.page.eval_on_selector_all(
        "#facts [data-fact=classes] li",
        "lis => lis.map(li => [li.textContent, getComputedStyle(li).unicodeBidi])",
    )
    assert shown == [[visible(c), "isolate"] for c in classes]
    odd = tmp_path / "odd\u202egnp.jpg"  # would read "oddpng.jpg"
    odd.write_bytes(images[0].read_bytes())
    v.page.set_input_files("#files", str(odd))
    result = v.results()[odd.name]  # data-name: the exact name
    assert [c for c, *_ in result["bars"]] == classes  # data-class: the exact names
    texts = v.page.eval_on_selector_all(".bars .cls", "cs => cs.map(c => c.textContent)")
    assert texts == [visible(c) for c in classes]
    assert v.page.text_content("li.result .name") == "odd\\u202egnp.jpg"
    assert "\u202e" not in result["alt"]
    # an answer without the verdict (a model saved before it): nothing about it shown
    assert (result["verdict"], result["said"], result["greyed"]) == ("unavailable", None, False)
    assert v.page.eval_on_selector_all("b", "bs => bs.length") == 0  # no markup from a name
    v.check_clean()


@pytest.mark.slow
def test_the_api_docs_render_offline(browser, server):
    """/docs (Swagger UI) with every request beyond this server failed, as on a machine
    without internet: its script, style and icon come from the service itself."""
    origin = server.url.rstrip("/")
    context = browser.new_context()
    try:
        asked, errors = [], []
        here = (origin + "/", "data:", "blob:")
        context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(here)
                      else r.abort("internetdisconnected"))  # fmt: skip
        page = context.new_page()
        page.on("request", lambda r: asked.append(r.url))
        page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))

        page.goto(server.url + "docs")
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=20_000)
        paths = page.eval_on_selector_all(
            ".opblock-summary-path", "ps => ps.map(p => p.textContent.replace(/\\u200b/g, ''))"
        )
        assert {"/predict", "/model", "/v2/models/{name}/infer"} <= set(paths)
        assert page.inner_text(".swagger-ui .info .title").startswith("cifar100")

        assert [u for u in asked if not u.startswith(here)] == []
        assert errors == []
    finally:
        context.close()


@pytest.mark.slow
def test_none_of_these_is_said_plainly_and_the_heat_map_comes_on_demand(visit, model, images):
    loaded = cifar100.load(model, device="cpu")
    verdicts = {p.name: r.none_of_these for p, r in zip(images, loaded.predict(images))}
    assert set(verdicts.values()) == {True, False}  # the threshold splits them
    for name, (width, height) in {"desktop": (1280, 900), "phone": (375, 740)}.items():
        v = visit(width, height)
        v.page.set_input_files("#files", [str(p) for p in images])
        results = v.results()
        for photo, none in verdicts.items():
            got = results[photo]
            assert got["verdict"] == ("none" if none else "class") and got["greyed"] == none
            assert (got["said"] or "").startswith("Not one of the 10 classes") == none
        odd = v.page.locator("li.result[data-verdict=none] >> nth=0")
        assert odd.locator(".verdict").is_visible()
        top = odd.locator(".bars li").first.get_attribute("data-class")

        toggle = odd.locator("button.heat-toggle")
        toggle.click()
        heat = odd.locator("figure.heat[data-state=done] img")
        heat.wait_for(timeout=30_000)
        assert heat.evaluate("img => img.naturalWidth") == 32 and heat.is_visible()
        caption = odd.locator("figure.heat figcaption").inner_text()
        assert "cannot show where it looked" in caption, caption  # a 1x1 feature map says so
        assert odd.locator("figure.heat").get_attribute("data-class") == top  # the best guess
        assert toggle.get_attribute("aria-pressed") == "true"
        shot = f"/tmp/page-verdict-{name}.png"
        v.page.screenshot(path=shot, full_page=True)
        toggle.click()
        assert not heat.is_visible() and toggle.get_attribute("aria-pressed") == "false"
        toggle.click()  # shown again, from the first answer
        assert heat.is_visible()
        assert len([u for u in v.requests if u.endswith("/explain")]) == 1
        overflow = v.page.evaluate("document.scrollingElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{name}: {overflow} px of horizontal scrolling"
        v.check_clean()
