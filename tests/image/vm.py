"""A throw-away QEMU VM of the appliance image: overlay disk, config drive, QMP, serial log.

The accelerator is KVM where the host's KVM can run a stock Debian kernel. On the
build machines /dev/kvm is kvm-pvm (nested PVM under Firecracker), which runs only
PVM-enabled guest kernels; a stock kernel faults in the firmware or right after
decompression, so there the VM runs under TCG (emulation), several times slower.
OUTPOST_QEMU_ACCEL=kvm|tcg overrides the choice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")


def accelerator() -> str:
    forced = os.environ.get("OUTPOST_QEMU_ACCEL")
    if forced:
        return forced
    hardware = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    return "kvm" if hardware and os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config_drive(path: Path, files: dict[str, str]) -> Path:
    """A FAT image labelled OUTPOSTSEED holding `files`; no loop device, no mount."""
    subprocess.run(["mkfs.fat", "-n", "OUTPOSTSEED", "-C", str(path), "4096"], check=True,
                   capture_output=True)
    staging = path.parent / (path.name + ".d")
    staging.mkdir()
    for name, text in files.items():
        (staging / name).write_text(text)
        subprocess.run(["mcopy", "-i", str(path), str(staging / name), "::/"], check=True)
    return path


def extract_boot_files(image: Path, workdir: Path) -> tuple[Path, Path]:
    """The kernel and initrd from the image's EFI partition (1 MiB in), with mtools."""
    raw = workdir / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    files = []
    for name in ("linux", "initrd"):
        target = workdir / name
        subprocess.run(["mcopy", "-n", "-i", f"{raw}@@1M", f"::outpost/{name}", str(target)],
                       check=True)
        files.append(target)
    raw.unlink()
    return files[0], files[1]


class Vm:
    def __init__(self, image: Path, workdir: Path, *, seed: Path | None = None,
                 forwards: dict[int, int] | None = None, memory_mb: int = 1024,
                 append: str | None = None, extra: list[str] | None = None,
                 restrict: bool = False) -> None:
        """`append`: boot the image's own kernel and initrd directly with this command line
        (what an edited boot entry would pass); otherwise boot through systemd-boot.
        `extra`: more qemu arguments (a second NIC, -fw_cfg entries). `restrict`: the
        user-mode network reaches nothing outside the VM (the port forwards still work)."""
        self.workdir = workdir
        self.accel = accelerator()
        self.console = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.disk = workdir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(image), str(self.disk)], check=True)
        vars_fd = workdir / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_fd)
        hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                          for host, guest in (forwards or {}).items())
        accel = ["-enable-kvm", "-cpu", "host"] if self.accel == "kvm" else \
            ["-accel", "tcg,thread=multi", "-cpu", "max"]
        self.command = [
            "qemu-system-x86_64", *accel, "-machine", "q35", "-smp", "2", "-m", str(memory_mb),
            "-nographic", "-serial", f"file:{self.console}", "-monitor", "none",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
            "-drive", f"if=virtio,format=qcow2,file={self.disk}",
            "-netdev", f"user,id=n0{',restrict=on' if restrict else ''}{hostfwd}",
            "-device", "virtio-net-pci,netdev=n0",
        ]
        if seed is not None:
            self.command += ["-drive", f"if=virtio,format=raw,readonly=on,file={seed}"]
        if append is not None:
            kernel, initrd = extract_boot_files(image, workdir)
            self.command += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
        self.command += extra or []
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=open(self.workdir / "qemu.out", "wb"),
                                        stderr=subprocess.STDOUT)

    def console_text(self) -> str:
        import re

        raw = self.console.read_bytes().decode(errors="replace") if self.console.exists() else ""
        return re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]", "", raw)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def qmp(self, *commands: str) -> list[dict[str, object]]:
        answers = []
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            json.loads(stream.readline())                      # greeting
            for command in ("qmp_capabilities", *commands):
                stream.write(json.dumps({"execute": command}) + "\n")
                stream.flush()
                while True:
                    answer = json.loads(stream.readline())
                    if "event" not in answer:
                        answers.append(answer)
                        break
        return answers

    def power_off(self, timeout: float = 180) -> int:
        """ACPI power button (systemd-logind shuts down cleanly); qemu's exit status."""
        assert self.process is not None
        self.qmp("system_powerdown")
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()
