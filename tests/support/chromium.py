"""A real headless Chromium that can reach loopback and nothing else, for pages the gateway
serves (tests/server/test_api_docs.py).

The page is opened under a made-up host name that resolves to 127.0.0.1 and every other name
fails to resolve (`--host-resolver-rules`), so nothing can leave the machine; Chromium's own
net log then says what was requested and where each TCP connection went, so a test can assert
that nothing even tried. Debian's `chromium` (scripts/test.sh installs it as root); under CI a
missing binary fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PAGE_HOST = "gateway.test"  # reserved for testing (RFC 2606): no real resolver answers it
# Virtual time: it advances only while the page is idle (no fetch pending), so a slow machine
# takes longer in real time but renders the same page.
VIRTUAL_TIME_MS = 30_000


def chromium_binary() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):  # scripts/test.sh installs it: never skip this in CI
            pytest.fail("chromium is missing: scripts/test.sh should have installed it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@dataclass
class PageLoad:
    dom: str  # the document after the page's scripts ran (--dump-dom)
    page_urls: list[str]  # every URL the page requested, itself included
    tcp_peers: list[str]  # host:port of every TCP connection Chromium attempted, its own too


def load_offline(port: int, path: str, work: Path) -> PageLoad:
    """Open http://gateway.test:PORT/PATH, served by whatever listens on 127.0.0.1:PORT."""
    work.mkdir(parents=True, exist_ok=True)
    net_log = work / "netlog.json"
    argv = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # tests run as root here; the sandbox refuses root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={work / 'profile'}",
        f"--host-resolver-rules=MAP {PAGE_HOST} 127.0.0.1, MAP * ~NOTFOUND",
        f"--log-net-log={net_log}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        "--dump-dom",
        f"http://{PAGE_HOST}:{port}{path}",
    ]
    env = {**os.environ, "HOME": str(work)}  # its caches and crash dirs stay in `work`
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    page_urls, tcp_peers = _read_net_log(net_log)
    return PageLoad(result.stdout, page_urls, tcp_peers)


def _read_net_log(net_log: Path) -> tuple[list[str], list[str]]:
    """The page's requests are those whose network isolation key's top frame is the page's
    site: Chromium's own background requests (time sync, sign-in, spelling dictionaries) carry
    other keys. Those fail to resolve all the same, and `tcp_peers` covers them too."""
    log = json.loads(net_log.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    page_site = f"http://{PAGE_HOST} "
    page_urls, tcp_peers = [], []
    for event in log["events"]:
        params, kind = event.get("params", {}), names[event["type"]]
        if kind == "URL_REQUEST_START_JOB" and "url" in params:
            if params.get("network_isolation_key", "").startswith(page_site):
                page_urls.append(params["url"])
        elif kind == "TCP_CONNECT":
            tcp_peers += params.get("address_list", [])
            tcp_peers += [params["remote_address"]] if "remote_address" in params else []
    return page_urls, tcp_peers


def off_loopback(load: PageLoad, port: int) -> list[str]:
    """What the page asked for elsewhere than the gateway, and any connection off 127.0.0.1."""
    gateway = f"http://{PAGE_HOST}:{port}"
    elsewhere = [url for url in load.page_urls if not url.startswith(gateway + "/")]
    peers = [peer for peer in load.tcp_peers if urlsplit(f"//{peer}").hostname != "127.0.0.1"]
    return elsewhere + peers
