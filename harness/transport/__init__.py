"""Ways to talk to a guest: its serial console (pexpect) and SSH (paramiko)."""
