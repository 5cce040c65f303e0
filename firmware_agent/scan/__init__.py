"""Parcel scanning: scanners (serial, HID) to :class:`Scan`, labels to :class:`ParcelCode`.

The pieces, each in its own module: :mod:`.types` (:class:`Scan`), :mod:`.codes`
(parsing labels, canonical codes), :mod:`.dedup` (double scans), :mod:`.log` (the
SCANS file), :mod:`.serial_reader` and :mod:`.hid_reader` (the devices), :mod:`.cli`.
Nothing is re-exported here: importing the package (as every ``fleet-agent`` command
does for its parser) must not pull in biip, pyserial or evdev.
"""
