"""Embedded mini-universe: small analogs of the paper's datasets labelled by real physics."""
