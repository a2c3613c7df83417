#!/usr/bin/env bash
# Install the test Slurm (Debian packages) for the tests in tests/cluster/: the one-node cluster (test_slurm.py,
# test_sweeps.py) and the two-node one built from network namespaces (test_multinode.py: also ip, unshare, nsenter).
# Run:   sudo bash slurm/install_test_slurm.sh        (Debian/Ubuntu, root; ~20 s; .ci/run calls it)
# It only installs packages; tests/helpers/slurm.py and tests/helpers/multinode.py write the configs and start/stop
# the daemons per test session.
set -euo pipefail

PACKAGES=(slurmd slurmctld slurm-client munge iproute2 util-linux)

if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null && command -v ip >/dev/null && command -v nsenter >/dev/null; then
  echo "install_test_slurm: already installed: slurm $(dpkg-query -W -f '${Version}' slurmctld 2>/dev/null)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install_test_slurm: run as root (apt-get install ${PACKAGES[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages' postinst scripts may try to start services; there is no init system in CI containers, so do not
# (a policy-rc.d that denies starts; one already present is left as it is).
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
echo "install_test_slurm: installed slurm $(dpkg-query -W -f '${Version}' slurmctld)"
