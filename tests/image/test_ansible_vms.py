"""The Ansible playbook for real: two blank Debian 12 VMs (image/build-plain.sh: sshd, python3,
sudo, no Outpost) under QEMU, provisioned over SSH by ansible/site.yml with the real roles
into a primary and a site that syncs with it over mutual TLS; a second run changes nothing.

Networking: each VM has a user-mode NIC (host port forwards: SSH, and IPP/device API on the
site, sync on the primary) and a second NIC on a point-to-point QEMU socket link (the
primary listens, the site connects) with static addresses 192.168.56.10/.11, the Vagrant
lab's. The VMs reach no mirror and no PyPI: Outpost and its dependencies come from the
host's wheel folder (built by the test with `pip wheel`; `pip install --no-index` by
outpost_common), the Debian packages the roles need are in the plain image (the user-mode
networks are restricted: nothing outside the VM but the port forwards). The test's own SSH key and each VM's
hostname and network file go in through QEMU fw_cfg (lab-seed.service in the image).

Certificates: the controller's `outpost pki` folder gives the primary its CA and its own
certificate; the site enrolls by a join token (outpost_site_enroll_via: the role runs
`outpost token create` on the primary) and gets its certificate from the primary.
Figures (blank VM to serving site, run times) go to image/out/measurements.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.vm import Vm, free_port

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image/out"
PLAIN = Path(os.environ.get("OUTPOST_PLAIN_IMAGE", OUT / "plain/debian12.qcow2"))
MEASUREMENTS = OUT / "measurements.json"
BOOT_TIMEOUT = float(os.environ.get("OUTPOST_SERVE_TIMEOUT", "600"))

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

PRIMARY_IP = "192.168.56.10"
SITE_IP = "192.168.56.11"
SITE = "branch-1"


def record(**figures: object) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(figures)
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


def plain_image() -> Path:
    """The plain VM image, (re)built when missing or older than its inputs."""
    inputs = [REPO / "image/build-plain.sh", REPO / "image/lib.sh",
              *(p for p in (REPO / "image/plain").rglob("*") if p.is_file())]
    if PLAIN.exists() and all(p.stat().st_mtime <= PLAIN.stat().st_mtime for p in inputs):
        return PLAIN
    subprocess.run(["bash", str(REPO / "image/build-plain.sh")], check=True)
    return PLAIN


def wheelhouse(tmp: Path) -> Path:
    """Outpost's wheel and its dependencies' wheels, built from this tree for this test (not
    image/out/wheels, which `make image` may be rewriting meanwhile)."""
    target = tmp / "wheels"
    subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pip", "wheel", "--quiet",
                    "--wheel-dir", str(target), str(REPO)], check=True, capture_output=True)
    return target


def network_file(mac: str, address: str) -> str:
    return f"[Match]\nMACAddress={mac}\n\n[Network]\nAddress={address}/24\n"


def ssh_base(key: Path, port: int) -> list[str]:
    return ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "vagrant@127.0.0.1"]


def wait_for_ssh(vm: Vm, key: Path, port: int, deadline: float) -> float:
    while time.monotonic() < deadline:
        assert vm.alive(), f"qemu exited early:\n{vm.console_text()[-3000:]}"
        try:
            if subprocess.run([*ssh_base(key, port), "true"], capture_output=True,
                              timeout=30).returncode == 0:
                return time.monotonic() - vm.started
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
    raise AssertionError(f"no SSH after {BOOT_TIMEOUT}s:\n{vm.console_text()[-4000:]}")


def ipptool(port: int, timeout: int = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ipptool", "-T", str(timeout), "-t",
                           f"ipp://127.0.0.1:{port}/printers/findme",
                           "get-printer-attributes.test"],
                          capture_output=True, text=True, timeout=timeout + 15)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host -> {ok, changed, unreachable, failed, ...}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)",
                                                                       match.group(2))}
    return hosts


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "outpost-test",
                        "-f", str(self.key)], check=True)
        self.ports = {name: free_port() for name in
                      ("primary_ssh", "primary_sync", "site_ssh", "site_ipp", "site_api", "link")}
        self.vms: dict[str, Vm] = {}

    def make_vm(self, image: Path, name: str, ip: str, mac: str, link: str,
                forwards: dict[int, int]) -> Vm:
        workdir = self.tmp / name
        workdir.mkdir()
        (workdir / "10-lab.network").write_text(network_file(mac, ip))
        # One vCPU each: two emulated VMs on a 2-core host gain nothing from more.
        extra = ["-smp", "1", "-netdev", f"socket,id=n1,{link}",
                 "-device", f"virtio-net-pci,netdev=n1,mac={mac}",
                 "-fw_cfg", f"name=opt/lab/authorized_keys,file={self.key}.pub",
                 "-fw_cfg", f"name=opt/lab/hostname,string={name}",
                 "-fw_cfg", f"name=opt/lab/network,file={workdir / '10-lab.network'}"]
        vm = Vm(image, workdir, forwards=forwards, extra=extra, restrict=True)
        self.vms[name] = vm
        return vm

    def boot(self, image: Path) -> dict[str, float]:
        """Both VMs up to SSH; seconds from each one's start."""
        p = self.ports
        primary = self.make_vm(image, "primary", PRIMARY_IP, "52:54:00:56:00:10",
                               f"listen=127.0.0.1:{p['link']}",
                               {p["primary_ssh"]: 22, p["primary_sync"]: 8633})
        site = self.make_vm(image, SITE, SITE_IP, "52:54:00:56:00:11",
                            f"connect=127.0.0.1:{p['link']}",
                            {p["site_ssh"]: 22, p["site_ipp"]: 631, p["site_api"]: 8632})
        primary.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the site's qemu connects to the primary's
            listening = subprocess.run(["ss", "-Hltn", f"sport = :{p['link']}"],
                                       capture_output=True, text=True).stdout
            if listening.strip():
                break
            assert primary.alive(), (primary.workdir / "qemu.out").read_text()
            time.sleep(0.2)
        site.start()
        deadline = time.monotonic() + BOOT_TIMEOUT
        return {"primary": wait_for_ssh(primary, self.key, p["primary_ssh"], deadline),
                SITE: wait_for_ssh(site, self.key, p["site_ssh"], deadline)}

    def inventory(self, wheels: Path, pki: Path) -> Path:
        p = self.ports
        common = {"ansible_host": "127.0.0.1", "ansible_user": "vagrant",
                  "ansible_ssh_private_key_file": str(self.key)}
        inventory = {"all": {
            "vars": {
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                           "-o UserKnownHostsFile=/dev/null",
                "outpost_common_wheel_dir": str(wheels),
                "outpost_common_apt_cache_valid_time": 0,
            },
            "children": {
                # The primary is the CA (its ca.key from the controller's pki folder) and
                # enrolls sites; the site enrolls by a join token the role makes on it.
                "outpost_primaries": {"hosts": {"primary": {
                    **common, "ansible_port": p["primary_ssh"],
                    "outpost_primary_tls_dir": str(pki), "outpost_primary_enroll": True}}},
                "outpost_sites": {"hosts": {SITE: {
                    **common, "ansible_port": p["site_ssh"],
                    "outpost_site_primary_url": f"https://{PRIMARY_IP}:8633",
                    "outpost_site_enroll_via": "primary"}}},
            }}}
        path = self.tmp / "hosts.json"  # JSON is YAML: the yaml inventory plugin reads it
        path.write_text(json.dumps(inventory, indent=2))
        return path

    def ssh(self, name: str, command: str) -> subprocess.CompletedProcess[str]:
        port = self.ports["primary_ssh" if name == "primary" else "site_ssh"]
        return subprocess.run([*ssh_base(self.key, port), command], capture_output=True,
                              text=True, timeout=120)

    def close(self) -> None:
        for name, vm in self.vms.items():
            if vm.alive():
                try:
                    vm.power_off(timeout=120)
                except Exception:
                    vm.kill()
            if vm.console.exists():
                (OUT / f"last-ansible-{name}-console.log").write_text(vm.console_text())


def playbook(inventory: Path, log: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible/ansible.cfg"),
           "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0"}
    t0 = time.monotonic()
    with log.open("w") as out:  # streamed: `tail -f` it while the run goes on
        done = subprocess.run(["ansible-playbook", "-i", str(inventory),
                               str(REPO / "ansible/site.yml")], cwd=REPO / "ansible",
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    elapsed = time.monotonic() - t0
    return subprocess.CompletedProcess(done.args, done.returncode, log.read_text(), ""), elapsed


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    for tool in ("qemu-system-x86_64", "ansible-playbook", "ipptool", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup-image.sh (make test-image does)")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_playbook_over_ssh_gives_a_primary_and_a_synced_site_then_changes_nothing(
        lab: Lab, tmp_path: Path) -> None:
    image = plain_image()
    wheels = wheelhouse(tmp_path)
    pki = tmp_path / "pki"
    outpost = [str(REPO / ".venv/bin/outpost"), "pki"]
    subprocess.run([*outpost, "init", str(pki)], check=True, capture_output=True)
    subprocess.run([*outpost, "issue", str(pki), "--kind", "primary", "--name", "primary",
                    "--host", PRIMARY_IP], check=True, capture_output=True)

    ssh_after = lab.boot(image)
    print(f"\nSSH up after {ssh_after['primary']:.1f} s (primary), {ssh_after[SITE]:.1f} s (site)")
    blank = lab.ssh(SITE, "test ! -e /opt/outpost && ! command -v outpost && echo blank")
    assert blank.stdout.strip() == "blank", blank.stdout + blank.stderr
    link = lab.ssh(SITE, f"timeout 10 bash -c '</dev/tcp/{PRIMARY_IP}/22'")  # the socket link
    assert link.returncode == 0, link.stdout + link.stderr

    inventory = lab.inventory(wheels, pki)
    first, first_s = playbook(inventory, tmp_path / "first.log")
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    hosts = recap(first.stdout)
    assert set(hosts) == {"primary", SITE}, first.stdout[-3000:]
    assert all(h["failed"] == 0 and h["unreachable"] == 0 and h["changed"] > 0
               for h in hosts.values()), hosts

    # The site serves its Find-Me queue through the host port forward.
    deadline = time.monotonic() + 120
    served = None
    while time.monotonic() < deadline:
        try:
            served = ipptool(lab.ports["site_ipp"])
            if served.returncode == 0:
                break
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)
    assert served is not None and served.returncode == 0 and "[PASS]" in served.stdout, \
        (served.stdout + served.stderr) if served else "ipptool never answered"
    site = lab.vms[SITE]
    blank_to_serving = time.monotonic() - site.started

    # The primary has heard from the site over mutual TLS (its heartbeats) ...
    query = ("sudo python3 -c \"import sqlite3; c = sqlite3.connect("
             "'file:/var/lib/outpost/outpost.sqlite3?mode=ro', uri=True); "
             "print(c.execute('SELECT name, last_seen FROM sync_sites').fetchall())\"")
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        seen = lab.ssh("primary", query).stdout
        if SITE in seen:
            break
        time.sleep(3)
    assert f"'{SITE}'" in seen, seen + lab.ssh("primary", "sudo journalctl -u "
                                               "outpost-primary --no-pager | tail -40").stdout
    # ... the site holds the certificate it enrolled for (the controller never made one) ...
    enrolled = lab.ssh(SITE, f"sudo test -s /var/lib/outpost-secrets/tls/{SITE}.crt && "
                             f"sudo test ! -e /etc/outpost/tls/site.crt && echo enrolled")
    assert enrolled.stdout.strip() == "enrolled", enrolled.stdout + enrolled.stderr
    # ... and the primary answers that certificate through its own port forward.
    for suffix in ("crt", "key"):
        copied = lab.ssh(SITE, f"sudo cat /var/lib/outpost-secrets/tls/{SITE}.{suffix}")
        assert copied.returncode == 0, copied.stderr
        (tmp_path / f"enrolled.{suffix}").write_text(copied.stdout)
    curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "20", "--cacert", str(pki / "ca.crt"),
                           "--cert", str(tmp_path / "enrolled.crt"), "--key", str(tmp_path / "enrolled.key"),
                           "--resolve", f"{PRIMARY_IP}:{lab.ports['primary_sync']}:127.0.0.1",
                           f"https://{PRIMARY_IP}:{lab.ports['primary_sync']}/sync/v1/snapshot"],
                          capture_output=True, text=True, timeout=60)
    assert curl.stdout == "200", curl.stdout + curl.stderr
    units = lab.ssh(SITE, "systemctl is-active outpost-site; systemctl is-enabled outpost-site")
    assert units.stdout.split() == ["active", "enabled"], units.stdout + units.stderr

    second, second_s = playbook(inventory, tmp_path / "second.log")
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
    again = recap(second.stdout)
    assert set(again) == {"primary", SITE}, second.stdout[-3000:]
    assert all(h["changed"] == 0 and h["failed"] == 0 for h in again.values()), \
        second.stdout[-6000:]

    record(ansible_vm_accelerator=site.accel,
           ansible_blank_vm_to_ssh_s=round(ssh_after[SITE], 1),
           ansible_first_run_s=round(first_s, 1),
           ansible_second_run_s=round(second_s, 1),
           ansible_blank_vm_to_serving_site_s=round(blank_to_serving, 1))
    print(f"accelerator {site.accel}: first run {first_s:.1f} s, second run {second_s:.1f} s "
          f"(changed=0); blank VM to an enrolled, serving site {blank_to_serving:.1f} s")
