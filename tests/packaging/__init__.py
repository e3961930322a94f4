"""Tests of the systemd unit and the Debian package (packaging/)."""
