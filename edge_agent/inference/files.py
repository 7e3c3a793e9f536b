"""A configured model's files on disk: which to try at start, and the writes of an install or a rollback.

Layout beside the live pair ``<path>`` + ``<path>.json``: ``<path>.prev`` (+ ``.json``), the model an
install replaced (what :func:`write_rollback` restores), and ``<path>.rolledback`` (+ ``.json``), the
model a rollback removed, kept for a post-mortem and never loaded again automatically. Every write is
atomic (:func:`edge_agent.fsutil.atomic_write`).
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import ModelConfig
from edge_agent.fsutil import atomic_write
from edge_agent.inference.model import BUILTIN_DIR, BUILTIN_PREFIX, Model, metadata_path
from edge_agent.inference.slot import meta_bytes


def sibling(path: Path, suffix: str) -> Path:
    """``<path><suffix>``, e.g. ``m.tflite.prev``."""
    return path.with_name(path.name + suffix)


def start_candidates(cfg: ModelConfig, load_path: Path, install_path: Path) -> list[Path]:
    """The files to try at start, in order: the live one, then ``.prev`` (an interrupted install or a
    corrupted file), then for a builtin model the shipped file (a broken installed copy: the shipped model
    beats none)."""
    candidates = [load_path]
    prev = sibling(install_path, ".prev")
    if prev.exists():
        candidates.append(prev)
    if cfg.path.startswith(BUILTIN_PREFIX):
        shipped = BUILTIN_DIR / f"{cfg.path[len(BUILTIN_PREFIX):]}.tflite"
        if shipped not in candidates:
            candidates.append(shipped)
    return candidates


def _write_pair(path: Path, model: Model) -> None:
    atomic_write(metadata_path(path), meta_bytes(model.meta.raw))
    atomic_write(path, model.blob)


def write_install(path: Path, current: Model | None, new: Model) -> None:
    """``new`` in place at ``path``, the running model's files kept as ``.prev``.

    Order matters for a crash at any point: the ``.prev`` copy is complete before the live file changes,
    and the loader falls back to ``.prev`` if the live pair does not validate.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if current is not None:
        prev = sibling(path, ".prev")
        atomic_write(prev, current.blob)
        atomic_write(metadata_path(prev), meta_bytes(current.meta.raw))
    _write_pair(path, new)


def write_rollback(path: Path, previous: Model, bad: Model | None) -> None:
    """``previous`` back in place at ``path``; ``bad`` kept as ``.rolledback``; ``.prev`` removed."""
    if bad is not None:
        rolled = sibling(path, ".rolledback")
        atomic_write(rolled, bad.blob)
        atomic_write(metadata_path(rolled), meta_bytes(bad.meta.raw))
    _write_pair(path, previous)
    prev = sibling(path, ".prev")
    for p in (prev, metadata_path(prev)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
