"""The results gallery (``report.html``) in a real browser: a toy DynamiCrafter run is trained a few
steps and evaluated (generation + tiny random-init extractors); the page is opened in headless
Chromium (Debian's ``chromium``), driven over the DevTools protocol on a pipe (no extra package), and
checked by script: every ``<video>`` reaches ``readyState >= 2`` (the H.264 mp4 decodes), every poster
and image loads, the results table has the expected rows; a screenshot is saved.

Outside CI the browser test skips when no chromium binary exists (``apt-get install chromium``);
with ``CI=true`` it never skips (``.ci/run`` installs it)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from conftest import ROOT, compose_train

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-pipe",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out;
    NUL-terminated JSON messages)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds():  # the child's fd 3 reads our commands, fd 4 writes the replies
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, *BROWSER_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=fds,
            pass_fds=(3, 4, to_browser_r, from_browser_w),  # 3, 4: kept after preexec_fn
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next, self._buf = 0, b""

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}")
            self._buf += chunk
        raise TimeoutError(method)

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        return session

    def evaluate(self, session: str, expression: str, timeout: float = 30):
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout,
        )
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


#: waits (up to 20 s) until the page has loaded and every video can play its current frame
CHECK_PAGE = """
new Promise(resolve => {
  const t0 = Date.now();
  const poll = () => {
    const vids = [...document.querySelectorAll('video')];
    const imgs = [...document.querySelectorAll('img')];
    const ready = document.readyState === 'complete' && vids.every(v => v.readyState >= 2 || v.error);
    if (ready || Date.now() - t0 > 20000) {
      resolve({
        videos: vids.map(v => ({src: v.getAttribute('src'), readyState: v.readyState,
                                error: v.error ? v.error.code : null, width: v.videoWidth,
                                poster: v.getAttribute('poster')})),
        images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
        posters: vids.map(v => v.getAttribute('poster')),
        rows: [...document.querySelectorAll('#results tbody tr')].map(r => ({
          cls: r.className, cells: [...r.cells].map(c => c.textContent)})),
        samples: [...document.querySelectorAll('.sample')].map(s => s.dataset.key),
        figures: [...document.querySelectorAll('#run img')].map(i => i.getAttribute('alt')),
      });
    } else { setTimeout(poll, 100); }
  };
  poll();
})
"""


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, toy_data):
    """A toy DynamiCrafter twin (learnable gates) trained 3 steps, then evaluated with generation."""
    from PIL import Image

    from i2vlab.evaluation import Evaluator
    from i2vlab.training import train

    root = tmp_path_factory.mktemp("gallery")
    run = root / "run"
    train(
        compose_train(
            ["experiment=ablation/dynamicrafter/toy_full", "trainer.max_steps=3", "trainer.val_check_interval=3",
             "data.num_workers=0", "callbacks.model_checkpoint.every_n_train_steps=3",
             "method.validation.num_samples=0", "method.validation.num_timesteps=1"],
            run, toy_data,
        )
    )  # fmt: skip
    import numpy as np

    rng = np.random.RandomState(0)
    lines = ["key,prompt,image"]
    for i in range(3):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8")).save(root / f"img{i}.png")
        lines.append(f"case{i},a red circle moving left {i},img{i}.png")
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    cfg = {
        "name": "gallery_toy",
        "protocol": {
            "title": "toy gallery",
            "paper": "DynamiCrafter Table 1 layout (toy)",
            "columns": [{"metric": "pic", "label": "PIC↑"}, {"metric": "clip_image", "label": "CLIP-I↑"}],
            "published": {"source": "none (toy)", "rows": {"PaperRow A": {"pic": 0.5}, "PaperRow B": {}}},
        },
        "metrics": ["pic", "clip_image", "flow_score"],
        "num_frames": 8,
        "resolution": [32, 32],
        "condition_image": "manifest",
        "allow_random_weights": True,
        "cache_dir": None,
        "plots": False,
        "output_dir": str(root / "eval"),
        "generate": {
            "checkpoint": str(run),
            "prompts": str(root / "cases.csv"),
            "num_frames": 8,
            "kwargs": {"num_inference_steps": 2},
        },  # fmt: skip
        "extractors": {
            "clip": {
                "tiny": {
                    "vision": {
                        "hidden_size": 32,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "intermediate_size": 64,
                        "image_size": 32,
                        "patch_size": 8,
                    },
                    "text": {
                        "hidden_size": 32,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "intermediate_size": 64,
                        "vocab_size": 1000,
                    },
                    "projection_dim": 16,
                }
            },
            "dreamsim": {
                "tiny": {
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                    "image_size": 32,
                    "patch_size": 8,
                }
            },
        },  # fmt: skip
    }
    results = Evaluator(cfg).run()
    return root / "eval", results


def test_report_html_is_written_with_h264_media_posters_table_and_run_figures(gallery):
    import av

    out, results = gallery
    page = (out / "report.html").read_text()
    assert page.count("<video") == 3 and page.count("class='sample'") == 3
    assert "PaperRow A" in page and "i2vlab (ours) [not comparable]" in page and "NOT COMPARABLE" in page
    for mp4 in sorted((out / "report_media").glob("*/video_*.mp4")):
        with av.open(str(mp4)) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p", mp4
            assert s.frames in (0, 8)  # 8 frames (some muxers leave the count unset)
        assert mp4.with_suffix(".png").is_file()
    assert (out / "report_media" / "run" / "training_curves.png").is_file()
    assert (out / "report_media" / "run" / "lambda.png").is_file()
    assert "results.md" in {p.name for p in out.iterdir()}


def test_report_can_be_switched_off(tmp_path):
    from i2vlab.evaluation import Evaluator

    cfg = {"name": "smoke", "metrics": ["psnr"], "num_frames": 8, "resolution": [32, 32], "cache_dir": None,
           "plots": False, "allow_random_weights": True, "output_dir": str(tmp_path),
           "synthetic": {"enabled": True, "num_videos": 2, "num_frames": 8, "size": [32, 32]},
           "report": {"html": False}}  # fmt: skip
    Evaluator(cfg).run()
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "report.html").exists()


def test_gallery_plays_in_headless_chromium(gallery):
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI=true but no chromium binary: .ci/run must install it (apt-get install -y chromium)"
            )
        pytest.skip("no chromium binary on this machine (apt-get install chromium) -- CI installs it")
    out, results = gallery
    browser = Chromium(binary)
    try:
        session = browser.open((out / "report.html").resolve().as_uri())
        state = browser.evaluate(session, CHECK_PAGE, timeout=40)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session, timeout=30)  # fmt: skip
    finally:
        browser.close()
    (out / "report_screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    shots = ROOT / "outputs" / "test_gallery"
    shots.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "report_screenshot.png", shots / "report_screenshot.png")
    assert (out / "report_screenshot.png").stat().st_size > 1000
    vids = state["videos"]
    assert len(vids) == 3
    bad = [v for v in vids if v["readyState"] < 2 or v["error"] is not None or v["width"] <= 0]
    assert not bad, f"videos the browser cannot play: {bad}"
    assert all(i["ok"] for i in state["images"]), state["images"]
    assert state["samples"] == ["case0", "case1", "case2"]
    rows = [r["cells"][0] for r in state["rows"]]
    assert rows == ["PaperRow A", "PaperRow B", "i2vlab (ours) [not comparable]"]
    assert "ours" in state["rows"][-1]["cls"] and "noncomparable" in state["rows"][-1]["cls"]
    assert len(state["figures"]) == 2  # training curves + lambda
    assert results["comparable"] is False
