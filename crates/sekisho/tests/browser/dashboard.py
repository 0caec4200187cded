#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium (Debian's), driven by Playwright.

Run by crates/sekisho/tests/dashboard.rs, which starts the gateway and its chaos upstream and
owns their processes. What needs the harness is asked for on stdout (`need: stop`, `need: start`)
and the harness answers `ok` on stdin once it is done; every other line is a step's report.

Every wait is for a selector or a condition in the page, bounded by a timeout: no sleep
synchronises anything here.

    dashboard.py --admin URL --traffic URL --chaos URL --token T --chromium PATH \
                 --screenshot FILE [--soak SECONDS] [--history POINTS]
"""

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

from playwright.sync_api import sync_playwright

WAIT_MS = 15_000


def say(line):
    print(line, flush=True)


def ask(what):
    """Asks the harness to do `what` and waits for its `ok`."""
    say(f"need: {what}")
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise SystemExit(f"the harness answered {answer!r} to {what}")


def post_json(url, body, token=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read() or b"{}")


def get_json(url, token):
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


class Traffic:
    """Requests to the gateway in a loop, from a thread, until stopped; answers do not matter."""

    def __init__(self, url):
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    answer.read()
            except Exception:  # 5xx answers raise: that is the point
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(timeout=5)


def heap_mb(cdp):
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["JSHeapUsedSize"] / 1e6, metrics.get("Nodes", 0)


def gateway_rss_mb(admin):
    """The resident memory of the process listening on the admin URL's port (Linux), or None."""
    port = admin.rsplit(":", 1)[-1]
    try:
        listing = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
        pid = re.search(r"pid=(\d+)", listing).group(1)
        with open(f"/proc/{pid}/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return round(kib / 1024, 1)
    except Exception:
        return None


def main():
    parser = argparse.ArgumentParser()
    for name in ("admin", "traffic", "chaos", "token", "chromium", "screenshot"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--soak", type=float, default=0)
    parser.add_argument("--history", type=int, default=0)
    args = parser.parse_args()
    admin = args.admin.rstrip("/")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # The token is asked once, then the stream goes live.
        page.goto(admin + "/")
        page.wait_for_selector("#login[open]")
        page.fill("#token", args.token)
        page.click("#token-submit")
        page.wait_for_selector('#connection[data-connection="live"]')
        say("step: token entered, stream live")

        # Every upstream healthy.
        page.wait_for_selector("[data-upstream]")
        page.wait_for_function(
            """() => { const all = [...document.querySelectorAll('[data-upstream]')];
                       return all.length > 0 && all.every(e => e.dataset.state === 'healthy'); }"""
        )
        page.wait_for_selector('[data-circuit="app"][data-state="closed"]')
        say("step: every upstream healthy, circuit closed")
        page.evaluate("window.__notReloaded = true")

        # A cached answer, purged by its key from the page's form.
        for _ in range(2):
            with urllib.request.urlopen(args.traffic + "/catalog/1", timeout=5) as answer:
                answer.read()
        page.wait_for_function("() => document.getElementById('cache-stats').textContent.startsWith('1 entries')")
        key = get_json(admin + "/api/v1/cache", args.token)["keys"][0]
        page.select_option("#purge-kind", "key")
        page.fill("#purge-value", key)
        page.click("#purge-form button[type=submit]")
        page.wait_for_function("() => document.getElementById('cache-stats').textContent.startsWith('0 entries')")
        assert get_json(admin + "/api/v1/cache", args.token)["keys"] == []
        say("step: cache entry purged from the page")

        # The config reloaded from the page: the next snapshot shows the new generation.
        page.click("#reload")
        page.wait_for_function("() => document.getElementById('meta').textContent.startsWith('generation 2 ')")
        page.wait_for_selector('#reloads li[data-reload="2"][data-state="healthy"]')
        say("step: config reloaded from the page, listed in the recent reloads")

        # For the docs' screenshot: healthy traffic first, until the charts hold that many points.
        if args.history:
            with Traffic(args.traffic + "/warm"):
                page.wait_for_function(
                    "n => (window.sekishoDashboard.upstreamHistory.get('app') || {length: 0}).length >= n",
                    arg=args.history,
                    timeout=args.history * 2000 + WAIT_MS,
                )

        # The upstream fails: its element turns critical and its circuit opens, without a reload.
        post_json(args.chaos + "/_chaos", {"error_rate": 1.0})
        with Traffic(args.traffic + "/fail"):
            page.wait_for_selector('[data-circuit="app"][data-state="open"]')
            page.wait_for_selector('[data-upstream="app"][data-state="critical"]')
            # The failures wanted retries, and the budget refused them: the harness gives the route
            # none (no retry left, in red), and the refusals are counted on the route's row.
            page.wait_for_selector('[data-route="app"] td[data-retry-budget="0"][data-state="critical"]')
            page.wait_for_function(
                """() => { const cell = document.querySelector('[data-route="app"] td.budget');
                           return cell && Number(cell.nextElementSibling.textContent) > 0; }"""
            )
            say("step: upstream critical, circuit open, retries refused by the budget")
            page.wait_for_function(
                "() => document.querySelector('[data-upstream=\"app\"] .reasons').textContent.includes('circuit open')"
            )
            alert = '[data-alert="AppCircuitOpen"]'
            page.wait_for_selector(alert + '[data-severity="warning"]')
            page.screenshot(path=args.screenshot, full_page=True)
            say(f"step: screenshot {args.screenshot}")
            page.click(alert + ' button[data-action="ack"]')
            page.wait_for_function(
                "a => document.querySelector(a + ' .what').textContent.includes('acknowledged')", arg=alert
            )
            alerts = get_json(admin + "/api/v1/alerts", args.token)["alerts"]
            assert [a["acknowledged"] for a in alerts] == [True], alerts
            page.click(alert + ' button[data-action="silence"]')
            page.wait_for_function(
                "a => document.querySelector(a + ' .what').textContent.includes('silenced')", arg=alert
            )
            silences = get_json(admin + "/api/v1/silences", args.token)["silences"]
            assert [m["value"] for s in silences for m in s["matchers"]] == ["AppCircuitOpen"], silences
            say("step: alert shown, acknowledged and silenced from the page")
        assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"

        # Force-closed from the page: the API agrees.
        post_json(args.chaos + "/_chaos", {"error_rate": 0.0})
        page.click('[data-circuit="app"] button[data-action="force_closed"]')
        page.wait_for_selector('[data-circuit="app"][data-state="forced_closed"]')
        circuits = get_json(admin + "/api/v1/circuits", args.token)["circuits"]
        state = next(c["state"] for c in circuits if c["name"] == "app")
        assert state == "forced_closed", f"the API says {state}"
        say("step: force-closed from the page, the API agrees")

        # The gateway restarts: the page reconnects by itself and shows the new process.
        ask("stop")
        page.wait_for_selector('#connection[data-connection="reconnecting"]')
        say("step: stream lost, page reconnecting")
        ask("start")
        page.wait_for_selector('#connection[data-connection="live"]')
        # A new process: its circuit starts closed again, which only live data can show.
        page.wait_for_selector('[data-circuit="app"][data-state="closed"]')
        assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
        say("step: reconnected after the restart, without a reload")

        if args.soak > 0:
            # Memory over a long stay: heap and DOM nodes after a forced GC, at the start and end.
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            with Traffic(args.traffic + "/soak"):
                start_heap, start_nodes = heap_mb(cdp)
                server_rss = [gateway_rss_mb(admin)]
                started = time.monotonic()
                samples = []
                while time.monotonic() - started < args.soak:
                    page.wait_for_timeout(min(30_000, args.soak * 1000 / 10))
                    samples.append(heap_mb(cdp))
                    server_rss.append(gateway_rss_mb(admin))
                end_heap, end_nodes = heap_mb(cdp)
            say(
                "soak: "
                + json.dumps(
                    {
                        "seconds": args.soak,
                        "heap_mb_start": round(start_heap, 2),
                        "heap_mb_end": round(end_heap, 2),
                        "heap_mb_max": round(max(h for h, _ in samples + [(end_heap, 0)]), 2),
                        "heap_mb_samples": [round(h, 2) for h, _ in samples],
                        "dom_nodes_samples": [int(n) for _, n in samples],
                        "dom_nodes_start": start_nodes,
                        "dom_nodes_end": end_nodes,
                        "gateway_rss_mb_samples": server_rss,
                    }
                )
            )

        assert not errors, f"errors in the page: {errors}"
        browser.close()
    say("passed")


if __name__ == "__main__":
    main()
