"""Drives the fleet page of `edgefleet up` (or `edgefleet demo --hold`) in a real headless
Chromium (Debian's, launched through Playwright's Python client) while a rollout runs, and
prints what the page showed as JSON on stdout. The Rust test `tests/e2e/fleet_page.rs` asserts
on it; this script only observes.

    python fleet_page.py --url 'http://127.0.0.1:PORT/#token=T' --screenshot-dir DIR \
        [--until-version 2.0.0] [--timeout 240]
"""

import argparse
import json
import os
import sys
import time
from urllib.parse import urldefrag

from playwright.sync_api import sync_playwright

# Without the networking flags Chromium keeps trying hosts a closed network refuses.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

READ_PAGE = """() => {
  const text = (node) => (node ? node.textContent.trim() : null);
  const deployments = [...document.querySelectorAll('#deployments-table tr[data-deployment]')].map((row) => ({
    name: row.dataset.deployment,
    version: text(row.children[1]),
    phase: text(row.querySelector('[data-field=phase]')),
    step: text(row.querySelector('[data-field=step]')),
  }));
  const cohorts = [...document.querySelectorAll('tr[data-cohort]')].map((row) => ({
    name: row.dataset.cohort,
    verdict: text(row.querySelector('[data-field=verdict]')),
    samples: Number(text(row.querySelector('[data-field=samples]'))),
  }));
  const devices = {};
  for (const row of document.querySelectorAll('#devices-table tr[data-device]')) {
    const id = row.dataset.device;
    devices[id] = devices[id] || [];
    devices[id].push({ variant: text(row.querySelector('[data-field=variant]')), state: text(row.querySelector('[data-field=state]')) });
  }
  return {
    loaded: document.body.dataset.loaded === 'true',
    summary: text(document.getElementById('summary')),
    banner: text(document.getElementById('banner')),
    deployments, cohorts, devices,
    chartLines: document.querySelectorAll('svg.chart polyline').length,
    events: document.querySelectorAll('#events-table tbody tr').length,
  };
}"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--screenshot-dir", required=True)
    parser.add_argument("--until-version", default="2.0.0")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--chromium", default=os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    os.makedirs(args.screenshot_dir, exist_ok=True)
    base, _ = urldefrag(args.url)
    result = {"screenshots": [], "snapshots": 0, "cohortsSeen": {}, "phasesSeen": [], "stepsSeen": [],
              "maxChartLines": 0, "devicesSeen": {}}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)

        # Without a token the page asks for one and shows no fleet data.
        page = browser.new_context().new_page()
        page.goto(base)
        page.wait_for_selector("#login:not([hidden])", timeout=10_000)
        result["withoutToken"] = {"loginShown": True, "rows": page.locator("tr[data-device]").count()}
        page.fill("#token-input", "not-the-token")
        page.click("#token-form button")
        # Locator waits run in Playwright's own world; a string predicate would be eval'd in
        # the page, which its Content-Security-Policy (no 'unsafe-eval') refuses.
        page.locator("#banner", has_text="refused").wait_for(timeout=10_000)
        result["wrongTokenBanner"] = page.inner_text("#banner")
        page.context.close()

        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.goto(args.url)
        page.locator("body[data-loaded='true']").wait_for(timeout=20_000)
        result["tokenLeftTheUrl"] = "token=" not in page.url
        deadline = time.monotonic() + args.timeout
        canary_shot = False
        last = None
        while time.monotonic() < deadline:
            last = page.evaluate(READ_PAGE)
            result["snapshots"] += 1
            for cohort in last["cohorts"]:
                result["cohortsSeen"].setdefault(cohort["name"], set()).add(cohort["verdict"])
            for d in last["deployments"]:
                if d["phase"] not in result["phasesSeen"]:
                    result["phasesSeen"].append(d["phase"])
                if d["step"] not in result["stepsSeen"]:
                    result["stepsSeen"].append(d["step"])
            for device, runs in last["devices"].items():
                result["devicesSeen"].setdefault(device, set()).update(r["state"] for r in runs)
            result["maxChartLines"] = max(result["maxChartLines"], last["chartLines"])
            canary_running = any(d["phase"] == "Progressing" for d in last["deployments"])
            if canary_running and last["cohorts"] and last["chartLines"]:
                # Taken again at every look while the canary runs: the file shows its latest state.
                path = os.path.join(args.screenshot_dir, "fleet-page-canary.png")
                page.screenshot(path=path, full_page=True)
                if not canary_shot:
                    result["screenshots"].append(path)
                canary_shot = True
            done = [d for d in last["deployments"] if d["phase"] == "Succeeded" and d["version"] == args.until_version]
            if done and canary_shot:
                break
            time.sleep(0.5)
        path = os.path.join(args.screenshot_dir, "fleet-page.png")
        page.screenshot(path=path, full_page=True)
        result["screenshots"].append(path)
        result["last"] = last
        browser.close()

    result["cohortsSeen"] = {k: sorted(v) for k, v in result["cohortsSeen"].items()}
    result["devicesSeen"] = {k: sorted(v) for k, v in result["devicesSeen"].items()}
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
