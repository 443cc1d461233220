"""Chaos, end to end: the real gateway process in front of fake upstreams that misbehave the
way real servers do (issue 15). A replica frozen by SIGSTOP (it takes connections and never
answers); clients that dribble their request heads a byte at a time (slowloris).

The vLLM chaos tests (kill -9 mid-stream, 200 streams whose clients leave) are in
test_chaos_vllm.py."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.processes import GatewayProcess
from tests.support.status_upstream import StatusUpstream
from tests.support.upstream_process import UpstreamProcess

ATTEMPTS = "x-vlmgw-attempts"
HI = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def card(gateway: GatewayProcess, replica: int) -> dict:
    models = httpx.get(gateway.url + "/v1/models/m", timeout=10).json()
    return models["vlm_gateway"]["replicas"][replica]


@pytest.fixture
def frozen_pair(tmp_path):
    """(frozen, gateway): two replicas of `m`, each a fake upstream in its own process; the
    first listed is the one the test freezes. Short timeouts; health checks rare, so only
    outlier ejection takes the frozen one out."""
    with UpstreamProcess() as frozen, UpstreamProcess() as healthy:
        quick = {"timeout": 1.0, "connect_timeout": 1.0, "health_interval": 300}
        models = [
            {"name": "m", "backend": "openai", "base_url": frozen.base_url, "eject_after": 2},
            {"name": "m", "backend": "openai", "base_url": healthy.base_url},
        ]
        config = {"data_dir": str(tmp_path / "data"), "models": [m | quick for m in models]}
        with GatewayProcess(config, tmp_path).start() as gateway:
            yield frozen, gateway


def test_a_frozen_replica_is_failed_over_ejected_and_back_after_sigcont(frozen_pair):
    frozen, gateway = frozen_pair
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        warm = [client.post("/v1/chat/completions", json=HI) for _ in range(2)]  # both replicas
        assert [r.status_code for r in warm] == [200, 200]
        frozen.freeze()
        answers: list[httpx.Response] = []

        def served_until_ejected() -> bool:
            answers.append(client.post("/v1/chat/completions", json=HI))
            return card(gateway, 0)["state"] == "ejected"

        wait_until(served_until_ejected, "the frozen replica ejected", interval_s=0)
        # Every request was served: those that reached the frozen replica first were tried
        # again on the other one when the upstream timeout (1 s) ran out.
        assert Counter(r.status_code for r in answers) == {200: len(answers)}
        assert sum(r.headers.get(ATTEMPTS) == "2" for r in answers) >= 2  # eject_after
        ejected = card(gateway, 0)
        assert ejected["ejections_in_a_row"] == 1 and "ejected" in ejected["reason"]
        assert card(gateway, 1)["state"] == "ready"
        # While it is out, requests go straight to the healthy replica: no second attempts.
        while_out = [client.post("/v1/chat/completions", json=HI) for _ in range(4)]
        assert [(r.status_code, r.headers.get(ATTEMPTS)) for r in while_out] == [(200, None)] * 4

        frozen.thaw()

        def back_in_rotation() -> bool:
            # After its cooldown (5 s) the next request it gets is its probe: it answers.
            assert client.post("/v1/chat/completions", json=HI).status_code == 200
            report = card(gateway, 0)
            return report["state"] == "ready" and "ejections_in_a_row" not in report

        wait_until(back_in_rotation, "the thawed replica back in rotation", interval_s=0.2)
    assert "replica 0 ejected for 5 s after failing 2 times in a row" in gateway.log()
    assert "replica 0 answered again: back in" in gateway.log()


# -- slowloris ------------------------------------------------------------------------------

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"user-agent: slowloris\r\nx-filler: " + b"a" * 200 + b"\r\n\r\n"
)


class Dribbler(threading.Thread):
    """Sends a request head one byte every `every_s` seconds, over and over: when the gateway
    closes the connection it counts a cut and connects again, as an attacker would. With
    `polite_first`, each connection first makes one whole request (then the dribbled one is
    the second request on a kept-alive connection)."""

    def __init__(self, port: int, every_s: float, stop: threading.Event, polite_first: bool):
        super().__init__(daemon=True)
        self.port, self.every_s, self.stop = port, every_s, stop
        self.polite_first = polite_first
        self.cuts = 0
        self.connected = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                if self.polite_first:
                    sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                self.connected.set()
                self._dribble(sock)

    def _dribble(self, sock: socket.socket) -> None:
        for byte in HEAD:
            if self.stop.wait(self.every_s):
                return
            try:
                sock.sendall(bytes([byte]))
                sock.setblocking(False)
                closed = sock.recv(1) == b""  # the gateway sends nothing but a close
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            sock.setblocking(True)
            if closed:
                self.cuts += 1
                return
        raise AssertionError("the whole head went through; the dribble was not slow enough")


@pytest.fixture
def slow_and_fast(tmp_path):
    """A gateway with a 1 s head deadline; model `m` answers at once, model `slow` after 2 s
    (longer than the head deadline: a slow answer must not be cut)."""
    with StatusUpstream() as fast, StatusUpstream(stall_s=2) as slow:
        config = {
            "data_dir": str(tmp_path / "data"),
            "header_timeout": 1,
            "models": [
                {"name": "m", "backend": "openai", "base_url": fast.base_url},
                {
                    "name": "slow",
                    "backend": "openai",
                    "base_url": slow.base_url,
                    "upstream_model": "m",
                },
            ],
        }
        with GatewayProcess(config, tmp_path).start() as gateway:
            yield gateway


def test_clients_that_dribble_their_headers_do_not_hold_up_others_and_are_cut(slow_and_fast):
    gateway = slow_and_fast
    stop = threading.Event()
    dribblers = [Dribbler(gateway.port, 0.05, stop, polite_first=i % 2 == 1) for i in range(8)]
    silent = socket.create_connection(("127.0.0.1", gateway.port))  # never sends a byte
    try:
        for dribbler in dribblers:
            dribbler.start()
        for dribbler in dribblers:
            assert dribbler.connected.wait(30)
        # Other clients, one after another on a kept-alive connection and 16 at once, with
        # streams among them, while the dribblers are connected.
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            one_by_one = [client.post("/v1/chat/completions", json=HI) for _ in range(10)]
            stream = client.post("/v1/chat/completions", json=HI | {"stream": True})
            slow = client.post("/v1/chat/completions", json=HI | {"model": "slow"})
        with ThreadPoolExecutor(16) as pool:
            at_once = list(pool.map(lambda _: _post(gateway.url), range(16)))
        assert [r.status_code for r in one_by_one] == [200] * 10
        assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
        assert slow.status_code == 200  # 2 s to answer: past the head deadline, not cut
        assert at_once == [200] * 16

        # Each dribbler is cut (and comes back, and is cut again); the silent one too.
        wait_until(lambda: all(d.cuts >= 2 for d in dribblers), "every dribbler cut twice")
        silent.settimeout(30)
        assert silent.recv(1) == b""
    finally:
        stop.set()
        silent.close()
        for dribbler in dribblers:
            dribbler.join(10)


def _post(url: str) -> int:
    return httpx.post(url + "/v1/chat/completions", json=HI, timeout=30).status_code


def test_a_head_too_large_is_refused_and_a_large_body_is_not(slow_and_fast):
    gateway = slow_and_fast
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        # 70 KiB of head, never finished, then nothing: the gateway reads it all and answers.
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: " + b"a" * 70_000)
        answer = b""
        while chunk := sock.recv(65536):  # the gateway answers, then closes
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    # Only the head counts: a body of 300 KB (a large prompt, an image) goes through.
    large = HI | {"messages": [{"role": "user", "content": "x" * 300_000}]}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=large).status_code == 200
