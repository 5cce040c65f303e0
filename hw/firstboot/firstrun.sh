#!/bin/bash
# First boot of a van's Raspberry Pi (Raspberry Pi OS Bookworm Lite, 64-bit).
#
# Bookworm images run a first-boot script the way Raspberry Pi Imager's own
# customisation does: cmdline.txt names it with
#   systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot
#   systemd.unit=kernel-command-line.target
# (docs/installer.md, step 2, shows the whole line). It runs once as root, before the
# normal boot, then removes itself and those words from cmdline.txt and reboots.
# (Raspberry Pi OS images based on Trixie use cloud-init's user-data instead; this
# script is for Bookworm, what the fleet package is built for.)
#
# Settings: /boot/firmware/fleet-firstboot.env, next to this script on the card:
#   VAN_HOSTNAME=van-0042
#   INSTALLER_USER=installer
#   INSTALLER_SSH_KEY="ssh-ed25519 AAAA... installer@laptop"
#   TIMEZONE=Etc/UTC                     (optional)
#   WIFI_COUNTRY=GB                      (optional; the van's uplink is usually LTE)
# and, optional, the package: /boot/firmware/fleet-agent_X.Y.Z_arm64.deb (installed
# with dpkg; Raspberry Pi OS already has every package it depends on).
set -u

BOOT=/boot/firmware
[ -d "$BOOT" ] || BOOT=/boot
ENV_FILE=$BOOT/fleet-firstboot.env
LOG=/var/log/fleet-firstboot.log
exec >>"$LOG" 2>&1
echo "fleet first boot: $(date -u +%FT%TZ)"

finish() {
    # Never run again: drop the systemd.run words from cmdline.txt, and this script.
    sed -i 's| systemd.run.*||g' "$BOOT/cmdline.txt"
    rm -f "$BOOT/firstrun.sh"
    exit 0
}
trap finish EXIT

if [ ! -f "$ENV_FILE" ]; then
    echo "no $ENV_FILE: nothing to set up"
    exit 0
fi
# shellcheck source=/dev/null
. "$ENV_FILE"

if [ -n "${VAN_HOSTNAME:-}" ]; then
    if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
        /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname "$VAN_HOSTNAME"
    else
        echo "$VAN_HOSTNAME" >/etc/hostname
        sed -i "s/127\.0\.1\.1.*/127.0.1.1\t$VAN_HOSTNAME/" /etc/hosts
    fi
fi

# The installer's login: SSH key only, no password (the account is locked).
user=${INSTALLER_USER:-installer}
if [ -x /usr/lib/userconf-pi/userconf ]; then
    # Renames the image's first user (uid 1000) and disables the setup wizard.
    /usr/lib/userconf-pi/userconf "$user" '!'
elif ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --groups sudo,adm "$user"
    passwd --lock "$user"
fi
if [ -n "${INSTALLER_SSH_KEY:-}" ]; then
    home=$(getent passwd "$user" | cut -d: -f6)
    install -d -o "$user" -g "$user" -m 0700 "$home/.ssh"
    printf '%s\n' "$INSTALLER_SSH_KEY" >"$home/.ssh/authorized_keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
    echo "$user ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/010_fleet-installer
    chmod 0440 /etc/sudoers.d/010_fleet-installer
    # Keys only: no password logins over SSH.
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
        >/etc/ssh/sshd_config.d/fleet.conf
    systemctl enable ssh
fi

if [ -n "${TIMEZONE:-}" ] && [ -f "/usr/share/zoneinfo/$TIMEZONE" ]; then
    ln -sf "/usr/share/zoneinfo/$TIMEZONE" /etc/localtime
    echo "$TIMEZONE" >/etc/timezone
fi
if [ -n "${WIFI_COUNTRY:-}" ] && command -v raspi-config >/dev/null; then
    raspi-config nonint do_wifi_country "$WIFI_COUNTRY"
fi

# The header's UART for the receiver, not for a login console
# (hw/config/config-pi4.txt / config-pi5.txt set up the hardware side).
if command -v raspi-config >/dev/null; then
    raspi-config nonint do_serial_cons 1
    raspi-config nonint do_serial_hw 0
fi
# Bluetooth is off on a Pi 4 (dtoverlay=disable-bt): its UART helper has nothing to do.
systemctl disable hciuart.service 2>/dev/null || true

for deb in "$BOOT"/fleet-agent_*_arm64.deb; do
    [ -f "$deb" ] || continue
    echo "installing $deb"
    dpkg -i "$deb" && rm -f "$deb"
done
echo "fleet first boot: done"
