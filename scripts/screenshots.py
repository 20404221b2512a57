"""Take the README's screenshots: start batchboard on the seeded sandbox in a scratch database, drive Chromium.

Usage: .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "screenshot-pw-1"  # noqa: S105 - a throwaway user in a throwaway database


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - our own local server
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer at {url}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    scratch = Path(tempfile.mkdtemp(prefix="batchboard-shots-"))
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{scratch / 'db.sqlite3'}",
        "SANDBOX_URL": f"http://127.0.0.1:{port}/sandbox/v1",
        "SANDBOX_FILES_DIR": str(scratch / "files"),
        "SANDBOX_SEED": "true",
        "OPENAI_API_KEY": "",
    }
    python = sys.executable
    manage = [python, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True)
    subprocess.run([*manage, "collectstatic", "--no-input", "-v", "0"], env=env, check=True)
    subprocess.run(
        [
            *manage,
            "shell",
            "-c",
            f"from django.contrib.auth.models import User; User.objects.create_superuser('alice', '', '{PASSWORD}')",
        ],
        env=env,
        check=True,
    )
    server = subprocess.Popen(
        [*manage, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/accounts/login/")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            for scheme in ("light", "dark"):
                context = browser.new_context(viewport={"width": 1360, "height": 900}, color_scheme=scheme)
                page = context.new_page()
                page.goto(f"{base}/accounts/login/")
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url("**/batches/")
                suffix = "" if scheme == "light" else "-dark"
                page.screenshot(path=str(out / f"list{suffix}.png"), full_page=False)
                running = page.locator("#batch-table tbody tr[data-live-state='in_progress'] a").first
                running.click()
                page.wait_for_selector("#batch-panel")
                page.screenshot(path=str(out / f"detail{suffix}.png"), full_page=True)
                page.goto(f"{base}/batches/new/")
                page.screenshot(path=str(out / f"create{suffix}.png"), full_page=True)
                context.close()
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
            page = phone.new_page()
            page.goto(f"{base}/accounts/login/")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url("**/batches/")
            page.screenshot(path=str(out / "phone-list.png"), full_page=False)
            page.locator("#batch-table [data-live-state='in_progress'] a").first.click()
            page.wait_for_selector("#batch-panel")
            page.screenshot(path=str(out / "phone-detail.png"), full_page=False)
            phone.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main()
