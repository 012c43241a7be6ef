"""Counting how a test's builds fingerprint their checkpoint."""

from __future__ import annotations


def count_fingerprints(monkeypatch) -> list[bool]:
    """Record each Checkpoint.fingerprint call's `content` flag (True: it read every weight byte,
    as --checkpoint-hash does) in the list returned."""
    from builder.kit.checkpoint import Checkpoint

    calls: list[bool] = []
    real = Checkpoint.fingerprint

    def counted(self, content=False):
        calls.append(content)
        return real(self, content)

    monkeypatch.setattr(Checkpoint, "fingerprint", counted)
    return calls
