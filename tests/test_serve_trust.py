"""How far to trust what `cifar100 serve` answers, the same in each place a prediction comes out:
/predict and the Open Inference Protocol give the model's calibrated probabilities, its OOD
score and its "none of these" verdict (runtime/trust.py), as `cifar100.load(...)` does in
process; POST /explain shows where the model looked, bounded so that it cannot starve /predict;
a model saved without the rule still predicts, with no verdict (on v2, as its exports: the
score, and a verdict always false)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import cifar100
from cifar100.runtime.checkpoint import Checkpoint
from cifar100.serve.app import create_app
from cifar100.serve.settings import ServeSettings
from serve_server import multipart, running_server

SIZE, N = 32, 6
TEMPERATURE = 1.7


def pngs(pixels: np.ndarray) -> list[tuple[str, bytes]]:
    """Each image as a PNG file part: lossless, so the server decodes the very same pixels."""
    parts = []
    for i, image in enumerate(pixels):
        out = io.BytesIO()
        Image.fromarray(image).save(out, "PNG")
        parts.append((f"{i}.png", out.getvalue()))
    return parts


def set_trust(run, temperature: float | None, threshold: float | None) -> None:
    """The run's checkpoints with this temperature and "none of these" threshold (None: a
    model saved before either existed)."""
    ood = None if threshold is None else {"threshold": threshold, "method": "entropy"}
    for path in (run / "best.pt", run / "last.pt"):
        if path.exists():
            ckpt = Checkpoint.load(path)
            ckpt.info.temperature, ckpt.info.ood = temperature, ood
            ckpt.save(path)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (N - 2, SIZE, SIZE, 3), np.uint8)
    flat = np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in (40, 200)])
    return np.concatenate([noise, flat])


@pytest.fixture(scope="module")
def run(tiny_run_copy, pixels):
    """The tiny run, calibrated with TEMPERATURE, with a threshold between its images' OOD
    scores: half of them are "none of these"."""
    loaded = cifar100.load(tiny_run_copy, device="cpu")
    scores = np.sort(loaded.scores(loaded.logits(pixels)).ood_score.numpy())
    set_trust(tiny_run_copy, TEMPERATURE, float(scores[N // 2 - 1] + scores[N // 2]) / 2)
    return tiny_run_copy


@pytest.fixture(scope="module")
def model(run):
    loaded = cifar100.load(run, device="cpu")
    assert loaded.temperature == TEMPERATURE and loaded.ood_rule is not None
    return loaded


@pytest.fixture(scope="module")
def old_run(tiny_trained, tmp_path_factory):
    """A copy of the tiny run as a model saved before calibration and the verdict existed."""
    root = shutil.copytree(tiny_trained.parent, tmp_path_factory.mktemp("old") / "root")
    set_trust(root / tiny_trained.name, None, None)
    return root / tiny_trained.name


@pytest.fixture(scope="module")
def server(run):
    with running_server(run, "--device", "cpu", "--max-images", str(N)) as s:
        yield s
    assert s.returncode == 0


def one_line(answer: bytes) -> str:
    message = json.loads(answer)["error"]
    assert message and "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.slow
def test_predict_and_v2_give_what_the_model_gives_in_process(server, model, pixels):
    body, content_type = multipart(pngs(pixels))
    status, answer, _ = server.post("predict?k=3", body, content_type)
    assert status == 200, answer
    want = model.predict(pixels, k=3)
    got = json.loads(answer)
    assert sorted(g["none_of_these"] for g in got) == [False] * (N // 2) + [True] * (N // 2)
    for g, w in zip(got, want):
        assert [p["class"] for p in g["predictions"]] == [c for c, _ in w.top]
        assert np.allclose([p["probability"] for p in g["predictions"]], [p for _, p in w.top],
                           atol=1e-5)  # fmt: skip
        assert g["ood_score"] == pytest.approx(w.ood_score, abs=1e-5)
        assert g["none_of_these"] == w.none_of_these

    scores = model.scores(model.logits(pixels))
    image = {"name": "images", "datatype": "UINT8", "shape": [N, SIZE, SIZE, 3],
             "data": pixels.ravel().tolist()}  # fmt: skip
    status, answer, _ = server.post(
        "v2/models/cifar100/infer", json.dumps({"inputs": [image]}).encode(), "application/json"
    )
    assert status == 200, answer
    outputs = {o["name"]: o for o in json.loads(answer)["outputs"]}
    assert list(outputs) == ["probabilities", "logits", "ood_score", "none_of_these"]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(N, -1)
    assert np.allclose(probabilities, scores.probabilities, atol=1e-5)  # calibrated: T = 1.7
    assert not np.allclose(probabilities, torch.softmax(model.logits(pixels), 1), atol=1e-3)
    assert (outputs["ood_score"]["shape"], outputs["none_of_these"]["shape"]) == ([N, 1], [N, 1])
    assert np.allclose(outputs["ood_score"]["data"], scores.ood_score, atol=1e-5)
    assert outputs["none_of_these"]["data"] == scores.none_of_these.tolist()


@pytest.mark.slow
def test_explain_gives_a_png_of_where_the_model_looked_for_each_image(server, model, pixels):
    body, content_type = multipart(pngs(pixels[:2]))
    status, answer, _ = server.post("explain", body, content_type)
    assert status == 200, answer
    got, want = json.loads(answer), model.predict(pixels[:2], k=1)
    assert [g["path"] for g in got] == ["0.png", "1.png"]
    for g, w in zip(got, want):
        assert (g["class"], g["class_index"]) == (w.label, model.classes.index(w.label))
        assert g["probability"] == pytest.approx(w.top[0][1], abs=1e-5)
        assert (g["ood_score"], g["none_of_these"]) == (pytest.approx(w.ood_score, abs=1e-5),
                                                        w.none_of_these)  # fmt: skip
        image = Image.open(io.BytesIO(base64.b64decode(g["overlay_png"])))
        assert (image.format, image.size, image.mode) == ("PNG", (SIZE, SIZE), "RGB")
        # The tiny model's last feature map is a single cell: its map cannot say where.
        assert g["localized"] is False
    # a class asked for, by name or index; one raw image as the body
    [[name, data]] = pngs(pixels[2:3])
    for asked in ("cat", "3"):
        status, answer, _ = server.post(f"explain?class={asked}", data, "image/png")
        assert status == 200 and [(a["class"], a["class_index"]) for a in json.loads(answer)] == [
            ("cat", 3)
        ]  # fmt: skip
    card = server.json("model")
    assert card["temperature"] == TEMPERATURE and card["ood_rule"] == model.ood_rule.to_json()
    metrics = server.get("metrics")[1].decode()
    assert 'cifar100_requests_total{route="/explain",status="200"}' in metrics
    assert "cifar100_explained_images_total 4.0" in metrics


def test_explain_refuses_a_bad_request_with_one_clear_line(server, pixels):
    parts = pngs(pixels[:1])
    cases = [  # (query, parts or a raw body, content type, status, words)
        ("", [], None, 400, "no image in the request"),
        ("", parts * (N + 1), None, 413, f"{N + 1} images in one request"),
        ("?class=10", parts, None, 422, "class '10': this model's classes are 0..9"),
        ("?class=zebra", parts, None, 422, "class 'zebra': not one of this model's classes"),
        ("", [("notes.txt", b"words")], None, 422, "notes.txt: not a readable image"),
        ("", b"{}", "application/json", 415, "send a multipart form of image files"),
    ]
    for query, sent, content_type, status, words in cases:
        body, content_type = (sent, content_type) if content_type else multipart(sent)
        got, answer, _ = server.post("explain" + query, body, content_type)
        assert got == status and words in one_line(answer), (query, got, answer)


@contextlib.asynccontextmanager
async def in_process(model, **settings):
    """The app of `model`, started (warmed up), and an HTTP client to it."""
    app = create_app(model, ServeSettings(**settings))
    async with app.router.lifespan_context(app):
        while not app.state.service.ready:
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as http:
            yield app, http


def files(pixels: np.ndarray) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", part) for part in pngs(pixels)]


@pytest.mark.slow
def test_a_model_without_the_rule_still_predicts_with_no_verdict(old_run, pixels):
    model = cifar100.load(old_run, device="cpu")
    assert model.temperature is None and model.ood_rule is None

    async def ask() -> list[httpx.Response]:
        async with in_process(model) as (_, http):
            infer = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [N, 32, 32, 3],
                                 "data": pixels.ravel().tolist()}]}  # fmt: skip
            return [
                await http.post("/predict", files=files(pixels[:2])),
                await http.post("/v2/models/cifar100/infer", json=infer),
                await http.post("/explain", files=files(pixels[:1])),
            ]  # fmt: skip

    predicted, inferred, explained = asyncio.run(ask())
    uncalibrated = torch.softmax(model.logits(pixels[:2]), 1).max(1).values
    answer = predicted.json()
    assert [(a["ood_score"], a["none_of_these"]) for a in answer] == [(None, None)] * 2
    assert np.allclose([a["predictions"][0]["probability"] for a in answer], uncalibrated,
                       atol=1e-5)  # fmt: skip
    # v2, as the model's ONNX and Triton exports answer: its score, and never "none of these"
    outputs = {o["name"]: o["data"] for o in inferred.json()["outputs"]}
    assert list(outputs) == ["probabilities", "logits", "ood_score", "none_of_these"]
    assert outputs["none_of_these"] == [False] * N
    entropy = model.scores(model.logits(pixels)).ood_score
    assert np.allclose(outputs["ood_score"], entropy, atol=1e-5)
    assert explained.status_code == 200
    assert (explained.json()[0]["ood_score"], explained.json()[0]["none_of_these"]) == (None, None)


@pytest.mark.slow
def test_explanations_take_turns_with_predict_batches_and_their_queue_is_bounded(
    model, pixels, monkeypatch
):
    """An explanation holds the model thread for one image at a time: a /predict batch that
    comes meanwhile runs after that one image, not after the whole request; beyond
    --max-explain-queue images waiting, 503 with Retry-After."""
    on_model_thread: list[tuple[str, str]] = []  # (what ran, on which thread)
    explain_s = 0.3

    def slow_explain(images, class_index=None, method="gradcam"):
        on_model_thread.append(("explain", threading.current_thread().name))
        time.sleep(explain_s)
        return np.full((len(images), SIZE, SIZE), 0.5, np.float32)

    monkeypatch.setattr(model, "explain", slow_explain)

    async def ask():
        async with in_process(model, max_explain_queue=3) as (app, http):
            run = app.state.service.batcher.run

            def batch(pixels, max_batch):
                on_model_thread.append(("batch", threading.current_thread().name))
                return run(pixels, max_batch)

            app.state.service.batcher.run = batch
            explaining = asyncio.create_task(http.post("/explain", files=files(pixels[:3])))
            await asyncio.sleep(explain_s / 3)  # the first image's explanation is running
            busy = await http.post("/explain", files=files(pixels[3:4]))
            predicted = await http.post("/predict", files=files(pixels[4:5]))
            return await explaining, busy, predicted

    explained, busy, predicted = asyncio.run(ask())
    assert explained.status_code == 200 and len(explained.json()) == 3
    assert predicted.status_code == 200
    # The explain request's own batch (its predictions), its first image, /predict's batch,
    # then its other two images: all on the one model thread.
    assert [what for what, _ in on_model_thread] == ["batch", "explain", "batch", "explain",
                                                     "explain"]  # fmt: skip
    assert {thread for _, thread in on_model_thread} == {"cifar100-model_0"}
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert "3 images are being explained or waiting to be" in busy.json()["error"]
    assert "--max-explain-queue" in busy.json()["error"]


@pytest.mark.slow
def test_explain_under_onnx_runtime_is_refused_with_one_line(run, pixels):
    from cifar100.serve.process import load_for_serving

    model = load_for_serving(str(run), "onnx", may_lighten=False)
    assert model.runtime == "onnx"

    async def ask() -> httpx.Response:
        async with in_process(model) as (_, http):
            return await http.post("/explain", files=files(pixels[:1]))

    refused = asyncio.run(ask())
    assert refused.status_code == 501
    assert refused.json()["error"].startswith("explanations need the PyTorch model")
    assert "--runtime torch" in refused.json()["error"]
