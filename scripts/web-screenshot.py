#!/usr/bin/env python3
"""Screenshots of the page on the board for docs/web.md, taken in headless Chromium through
its DevTools protocol, so that a view that needs a click (Compare) can be shown too.

    pip install websocket-client
    scripts/web-screenshot.py http://127.0.0.1:8080/ OUT.png [--compare cam iscam scorecam:k=32]
        [--width 1200] [--height 1400] [--token TOKEN]

Needs a running daemon with [web] listen, and Debian's chromium.
"""
import argparse
import base64
import json
import subprocess
import tempfile
import time
import urllib.request

import websocket


def devtools(port):
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("chromium's DevTools did not answer")


class Page:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=120)
        self.next = 0

    def call(self, method, **params):
        self.next += 1
        self.ws.send(json.dumps({"id": self.next, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next:
                if "error" in message:
                    raise SystemExit(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression, seconds=120):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.eval(expression):
                return
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {expression}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--compare", nargs="*", help="method specs to compare (2-4)")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--token")
    args = parser.parse_args()

    port = 9333
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        chromium = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
             f"--window-size={args.width},{args.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            page = Page(devtools(port))
            page.call("Page.enable")
            page.call("Page.navigate", url=args.url)
            if args.token:
                page.wait_for("document.readyState === 'complete'")
                page.eval(f"document.getElementById('token').value = {json.dumps(args.token)};"
                          "document.getElementById('login-form').requestSubmit(); true")
            page.wait_for("document.querySelectorAll('#top5 li').length > 0")
            if args.compare:
                specs = json.dumps(args.compare)
                page.eval(f"const s = {specs}; document.querySelectorAll('#compare-form .spec')"
                          ".forEach((e, i) => e.value = s[i] || ''); "
                          "document.getElementById('compare-form').requestSubmit(); true")
                page.wait_for(f"document.querySelectorAll('#compared img').length === {len(args.compare)} && "
                              "[...document.querySelectorAll('#compared img')].every(i => i.complete)")
                page.eval("document.getElementById('explain').scrollIntoView(); true")
            time.sleep(1)
            shot = page.call("Page.captureScreenshot", format="png")
            with open(args.out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        finally:
            chromium.terminate()
            chromium.wait()


if __name__ == "__main__":
    main()
