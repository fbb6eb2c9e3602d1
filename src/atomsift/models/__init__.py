"""GemNet-OC backbone, heads and checkpoint I/O."""
