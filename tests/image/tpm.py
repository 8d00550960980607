"""A software TPM2 (swtpm) for a test VM: its state folder outlives the VM, so that a second
boot of the same disk finds the same TPM (and the same sealed key) again.

    tpm = Swtpm(workdir / "tpm")
    tpm.start()
    vm.command += tpm.qemu_args()      # before vm.start()
    ...
    tpm.stop()                         # after qemu exits; start() again for the next boot
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


class Swtpm:
    def __init__(self, state_dir: Path) -> None:
        if shutil.which("swtpm") is None:
            raise RuntimeError("swtpm is missing: run scripts/setup-image.sh")
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket = state_dir / "swtpm.sock"
        self.log = state_dir / "swtpm.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
             "--ctrl", f"type=unixio,path={self.socket}",
             "--log", f"file={self.log},level=1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"swtpm did not start: {self.log.read_text()[-2000:]}"
                                   if self.log.exists() else "swtpm did not start")
            time.sleep(0.05)

    def qemu_args(self) -> list[str]:
        return ["-chardev", f"socket,id=chrtpm,path={self.socket}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", "tpm-tis,tpmdev=tpm0"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
