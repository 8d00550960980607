#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, only when missing.
# Idempotent: a machine that has them all runs no apt-get at all.
set -euo pipefail

# Package -> a file that proves it is installed (cheaper and surer than dpkg -l).
declare -A PROBES=(
  [cups]=/usr/lib/cups/backend/lpd
  [cups-client]=/usr/bin/lp
  [cups-bsd]=/usr/bin/lpr
  [cups-ipp-utils]=/usr/bin/ipptool
  [rlpr]=/usr/bin/rlpr
  [strace]=/usr/bin/strace
  [ghostscript]=/usr/bin/gs
  [snmp]=/usr/bin/snmpwalk
  [snmpd]=/usr/sbin/snmpd
  [slapd]=/usr/sbin/slapd
  [ldap-utils]=/usr/bin/ldapsearch
  [iproute2]=/usr/sbin/ip
  # The Ansible roles' lint and syntax tests (tests/unit/test_ansible.py).
  [ansible-core]=/usr/bin/ansible-playbook
  [ansible-lint]=/usr/bin/ansible-lint
  # systemd-analyze, -sysusers, -tmpfiles for the unit tests (systemd need not be PID 1).
  [systemd]=/usr/bin/systemd-analyze
)

missing=()
for pkg in "${!PROBES[@]}"; do
  [[ -e "${PROBES[$pkg]}" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "setup: Debian peers present"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi
echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# slapd asks debconf questions; noninteractive takes the defaults, the tests run their own slapd.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The packages start system daemons on install where they can; the tests run their
# own private instances on loopback ports and do not need them.
