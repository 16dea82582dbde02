"""Detects Azure Linux VMs whose boot froze on 'Failed to load SELinux policy' and repairs them safely."""

__version__ = "0.1.0"
