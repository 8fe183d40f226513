"""Fleets of serving VMs on 127.0.0.1 for the fleet-status tests: each VM is the real ``modelfleet agent`` process
(so it can be SIGKILLed) next to its own faithful TF Serving stand-in, writing heartbeats to a real store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tests.support.agent import MODEL
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn

HEARTBEAT = 0.5  # seconds: stale after 1.5 s
PREDICT_BODY = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()


class VM:
    """One serving VM: TF Serving (the stand-in, in this process) and the agent (a child process)."""

    def __init__(self, store: str, root: Path, role: str, instance: str, **standin: Any) -> None:
        self.store, self.root, self.role, self.instance = store, root, role, instance
        self.port = free_port()
        self.log = root.parent / f"{instance}.log"
        self._run_agent("--once")  # one sync: the config TF Serving starts from (exit 1: nothing serves it yet)
        self.tfs = TFServingStandIn(
            faithful=True,
            grpc=False,
            rest_api_port=self.port,
            model_config_file=root / "models.config",
            model_config_file_poll_wait_seconds=0.05,
            load_seconds=0.05,
            unload_seconds=0.05,
            max_num_load_retries=0,
            load_retry_interval_micros=1000,
            file_system_poll_wait_seconds=0.1,
            **standin,
        )
        self.tfs.start()
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "modelfleet",
            "agent",
            "--store",
            self.store,
            "--models",
            MODEL,
            "--root",
            str(self.root),
            "--role",
            self.role,
            "--poll",
            "0.2",
            "--tfs-url",
            self.tfs_url,
            "--switch",
            "overlap",
            "--heartbeat",
            str(HEARTBEAT),
            "--instance-id",
            self.instance,
            *extra,
        ]

    @property
    def tfs_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run_agent(self, *extra: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(self._argv(*extra), check=False, capture_output=True, timeout=60)

    def start(self) -> VM:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self._argv("--listen", f"127.0.0.1:{free_port()}"), stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        """SIGKILL the agent: no last heartbeat, as when a VM dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.tfs.stop()

    def predict(self) -> int:
        """One predict of the model through this VM's TF Serving; the HTTP status."""
        request = urllib.request.Request(
            f"{self.tfs_url}/v1/models/{MODEL}/labels/{self.role}:predict", PREDICT_BODY, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0


@contextmanager
def fleet(store: str, tmp: Path, layout: dict[str, int], **standin: Any) -> Iterator[dict[str, list[VM]]]:
    """``layout`` = {role: VMs}; yields {role: [VM, ...]} with every agent running; stops them all at the end."""
    with ExitStack() as stack:
        vms: dict[str, list[VM]] = {}
        for role, count in layout.items():
            for i in range(count):
                vm = VM(store, tmp / f"{role}-{i}" / "models", role, f"{role[0]}{i}", **standin.get(role, {}))
                stack.callback(vm.stop)
                vms.setdefault(role, []).append(vm.start())
        yield vms


class Traffic:
    """Predicts against some VMs, ``threads`` loops per VM each sending up to ``rate`` a second, until stopped."""

    def __init__(self, vms: list[VM], rate: float, threads: int = 2) -> None:
        self.vms, self.rate = vms, rate
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(vm,), name="traffic", daemon=True)
            for vm in vms
            for _ in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _loop(self, vm: VM) -> None:
        while not self._stop.is_set():
            vm.predict()
            self._stop.wait(1 / self.rate)
