"""The harness's own services: one that never comes up is stopped, not left running after the error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench.procs import Service, free_port, wait_http


def test_a_service_that_never_answers_is_stopped_when_the_wait_gives_up():
    port = free_port()
    # Listens but never answers: a service stuck in its start-up.
    code = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); time.sleep(600)"
            % port)
    svc = Service("stuck", subprocess.Popen([sys.executable, "-c", code]), f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(RuntimeError, match="not ready"):
            wait_http(svc.url + "/readyz", timeout=0.5, service=svc)
        assert not svc.alive()
    finally:
        svc.proc.kill()
        svc.proc.wait()


def test_a_service_that_answers_is_left_running():
    port = free_port()
    svc = Service("http", subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                  f"http://127.0.0.1:{port}")
    try:
        wait_http(svc.url + "/", service=svc)
        assert svc.alive()
    finally:
        svc.stop()
