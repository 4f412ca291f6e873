"""code-exec: a Kopf operator that runs untrusted code in gVisor sandbox pods."""
