"""Open an experiment report in headless Chromium: screenshot, console errors, external references.

    python benchmarks/report_check.py RUN_DIR [--screenshot OUT.png] [--data-dir DIR] [--regenerate]
    python benchmarks/report_check.py REPORT.html [--screenshot OUT.png]

Writes the report first when RUN_DIR has none (or with ``--regenerate``). Then:

1. a static scan of the HTML: every ``src``, ``href``, ``srcset``, ``poster``, CSS ``url()`` and
   ``@import`` must be a ``data:`` URI or an in-page ``#anchor``;
2. Chromium (Debian's ``chromium``, headless) loads the page through the DevTools protocol over a pipe
   (``--remote-debugging-pipe``), with every host name resolving to nothing, and records console
   errors, uncaught exceptions, failed loads, every request that is not the report itself or a
   ``data:`` URI, and broken images; it checks that the DOM is complete (the footer is there) and
   saves a screenshot of a 1280 x 2400 window.

``--method cli`` instead runs the plain command line
``chromium --headless --disable-gpu --no-sandbox --screenshot=OUT --window-size=1280,2400 file://...``
with ``--enable-logging=stderr --v=0``, and counts every ``CONSOLE`` line of its log (the report runs
no script, so any console message is unexpected).

Prints what it found; exits 1 on console errors, external references or requests, broken images or an
incomplete DOM; 2 when Chromium is missing or fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

_URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "xlink:href", "background",
              "cite", "longdesc", "manifest", "ping", "icon"}
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)|@import\s+(['"])(.*?)\3""", re.I | re.S)
_END_ID = "report-end"


@dataclass
class CheckResult:
    """What the check found."""

    external: list[str] = field(default_factory=list)  # static references to outside the file
    requests: list[str] = field(default_factory=list)  # requests the browser made to outside the file
    console: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    broken_images: list[str] = field(default_factory=list)
    dom_complete: bool | None = None
    screenshot: Path | None = None
    chromium: str = ""
    command: list[str] = field(default_factory=list)
    n_images: int | None = None
    page_height: int | None = None

    @property
    def ok(self) -> bool:
        return not (self.external or self.requests or self.console or self.broken_images) and self.dom_complete is True


def _is_local(url: str) -> bool:
    url = url.strip()
    return url == "" or url.startswith("#") or url.lower().startswith("data:")


class _RefCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name == "srcset":
                self.refs += [part.strip().split(" ")[0] for part in value.split(",") if part.strip()]
            elif name in _URL_ATTRS:
                self.refs.append(value)
            elif name == "style":
                self._css(value)
            elif name == "content" and re.search(r"url\s*=", value, re.I):  # <meta http-equiv="refresh">
                self.refs.append(value.split("=", 1)[1])

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self._css(data)

    def _css(self, text: str) -> None:
        for m in _CSS_URL.finditer(text):
            self.refs.append(m.group(2) if m.group(2) is not None else m.group(4))


def static_references(html_text: str) -> list[str]:
    """References of the page to anything outside itself (not ``data:``, not ``#anchor``)."""
    parser = _RefCollector()
    parser.feed(html_text)
    parser.close()
    bad = [r for r in parser.refs if not _is_local(r)]
    # Belt and braces: protocol-relative or absolute URLs in attributes the parser did not list.
    bad += [m.group(1) for m in re.finditer(r"""(?:src|href)\s*=\s*["']?((?://|https?:)[^"'\s>]*)""", html_text, re.I)]
    return [r[:120] for r in dict.fromkeys(bad)]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium_flags(user_dir: str) -> list[str]:
    return ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
            "--hide-scrollbars", "--mute-audio", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--password-store=basic",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={user_dir}"]


class _Pipe:
    """The DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, chromium: str, flags: list[str]) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.command = [chromium, *flags, "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["sh", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w}', "sh", *self.command],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._next = 0
        self._replies: dict[int, dict] = {}
        self.events: queue.Queue[dict] = queue.Queue()
        self._cond = threading.Condition()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None  # stderr=PIPE
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._out_r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._replies[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self.events.put(msg)
        with self._cond:
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no reply to {method} from Chromium; its log ends with: "
                                       f"{b''.join(self._stderr[-3:]).decode(errors='replace').strip()}")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(self._next)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)


def _check_cdp(chromium: str, page: Path, screenshot: Path, width: int, height: int, full_page: bool,
               result: CheckResult) -> None:
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="leukoseg-chromium-") as user_dir:
        pipe = _Pipe(chromium, _chromium_flags(user_dir))
        result.command = pipe.command
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            loaded, deadline, quiet_until = False, time.monotonic() + 60, None
            while True:
                now = time.monotonic()
                if now > deadline or (quiet_until is not None and now > quiet_until):
                    break
                try:
                    ev = pipe.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ev.get("sessionId") != session:
                    continue
                method, params = ev.get("method"), ev.get("params", {})
                if method == "Page.loadEventFired" and not loaded:
                    loaded, quiet_until = True, time.monotonic() + 1.0  # late events
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                    result.console.append(f"console.{params['type']}: {text}")
                elif method == "Runtime.exceptionThrown":
                    d = params.get("exceptionDetails", {})
                    result.console.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                    e = params["entry"]
                    result.console.append(f"{e.get('source')} {e['level']}: {e.get('text')} {e.get('url', '')}".strip())
                elif method == "Network.requestWillBeSent":
                    req = params.get("request", {}).get("url", "")
                    if req != url and not req.startswith(("data:", "about:")):
                        result.requests.append(req[:160])
                elif method == "Network.loadingFailed" and not params.get("canceled"):
                    result.console.append(f"load failed: {params.get('errorText')}")
            if not loaded:
                result.console.append("the page did not finish loading within 60 s")
            probe = ("JSON.stringify({end: document.getElementById('" + _END_ID + "') !== null,"
                     " state: document.readyState, n: document.images.length,"
                     " h: document.documentElement.scrollHeight,"
                     " broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                     ".map(i => i.alt || i.src.slice(0, 60))})")
            value = pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                              session=session)["result"]["value"]
            info = json.loads(value)
            result.dom_complete = bool(info["end"]) and info["state"] == "complete"
            result.broken_images = info["broken"]
            result.n_images, result.page_height = info["n"], info["h"]
            params = {"format": "png"}
            if full_page:
                params.update(captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": width, "height": info["h"], "scale": 1})
            shot = pipe.send("Page.captureScreenshot", params, session=session, timeout=60)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            result.screenshot = screenshot
        finally:
            pipe.close()


def _check_cli(chromium: str, page: Path, screenshot: Path, width: int, height: int, result: CheckResult) -> None:
    with tempfile.TemporaryDirectory(prefix="leukoseg-chromium-") as user_dir:
        cmd = [chromium, *_chromium_flags(user_dir), "--enable-logging=stderr", "--v=0",
               f"--screenshot={screenshot}", f"--window-size={width},{height}", page.resolve().as_uri()]
        result.command = cmd
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    for line in done.stderr.splitlines():
        if ":CONSOLE" in line or "Failed to load resource" in line:
            result.console.append(line.split("] ", 1)[-1])
    with tempfile.TemporaryDirectory(prefix="leukoseg-chromium-") as user_dir:
        dom = subprocess.run([chromium, *_chromium_flags(user_dir), "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    result.dom_complete = f'id="{_END_ID}"' in dom and dom.rstrip().endswith("</html>")
    if screenshot.is_file():
        result.screenshot = screenshot


def check_report(page: Path, *, screenshot: Path, width: int = 1280, height: int = 2400, full_page: bool = False,
                 method: str = "cdp", chromium: str | None = None) -> CheckResult:
    """Check one HTML report; see the module docstring."""
    result = CheckResult()
    result.external = static_references(page.read_text(encoding="utf-8"))
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    result.chromium = subprocess.run([chromium, "--version"], capture_output=True, text=True,
                                     timeout=60).stdout.strip()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    if method == "cdp":
        _check_cdp(chromium, page, screenshot, width, height, full_page, result)
    else:
        _check_cli(chromium, page, screenshot, width, height, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder (report.html inside, written when absent) or an HTML file")
    parser.add_argument("--screenshot", type=Path, help="PNG to write (default: report.png beside the report)")
    parser.add_argument("--data-dir", type=Path, help="data folder, for the thumbnails when writing the report")
    parser.add_argument("--regenerate", action="store_true", help="write the report even if there is one")
    parser.add_argument("--window-size", default="1280,2400", help="WIDTH,HEIGHT (default 1280,2400)")
    parser.add_argument("--full-page", action="store_true", help="screenshot the whole page, not the window")
    parser.add_argument("--method", choices=("cdp", "cli"), default="cdp",
                        help="DevTools protocol over a pipe (default) or the plain --screenshot command line")
    args = parser.parse_args(argv)

    if args.run.is_dir():
        page = args.run / "report.html"
        if args.regenerate or not page.is_file():
            from leukoseg.pipelines.report import write_report

            write_report(args.run, data_dir=args.data_dir)
    else:
        page = args.run
    if not page.is_file():
        print(f"report_check: {page}: no such file", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.window_size.split(","))
    screenshot = args.screenshot or page.with_suffix(".png")
    t0 = time.perf_counter()
    try:
        res = check_report(page, screenshot=screenshot, width=width, height=height, full_page=args.full_page,
                           method=args.method)
    except (FileNotFoundError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"report_check: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0

    print(f"report:       {page} ({page.stat().st_size / 1024:.0f} KiB)")
    print(f"browser:      {res.chromium}")
    print(f"command:      {' '.join(res.command)}")
    print(f"dom complete: {res.dom_complete}" + (f" ({res.n_images} images, page {res.page_height} px high)"
                                                 if res.n_images is not None else ""))
    for label, items in (("external references in the HTML", res.external),
                         ("requests outside the file", res.requests),
                         ("console errors and failed loads", res.console),
                         ("broken images", res.broken_images)):
        print(f"{label}: {len(items)}")
        for item in items[:20]:
            print(f"  - {item}")
    if args.method == "cli":
        print("(--method cli cannot observe requests or image loads; the static scan covers references)")
    print(f"screenshot:   {res.screenshot}")
    print(f"checked in {seconds:.1f} s: {'OK' if res.ok else 'FAILED'}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
