"""The model commands the inference service registers with the command channel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.errors import ModelError
from edge_agent.ids import ID_PATTERN

if TYPE_CHECKING:
    from edge_agent.inference.service import InferenceService


def register(service: InferenceService, registry: Any) -> None:
    """``model.list`` (read-only), ``model.rollback``, ``model.calibrate``; ``model.update`` is a command builtin."""
    from edge_agent.commands.schema import Arg
    from edge_agent.errors import CommandError

    def model_list(ctx: Any) -> list[dict[str, Any]]:
        """Models with version, sha256, counters and last score."""
        return service.describe()

    def model_rollback(ctx: Any, model: str) -> dict[str, Any]:
        """Restore the previous version of a model (kept since the last install)."""
        if model not in service.slots:
            raise CommandError("not_found", f"no model named {model!r} (configured: "
                                            f"{', '.join(service.slots) or 'none'})")
        try:
            return service.rollback(model, reason="model.rollback command")
        except ModelError as e:
            raise CommandError("rollback_failed", str(e)) from None

    def model_calibrate(ctx: Any, model: str) -> dict[str, Any]:
        """Learn the model's threshold on this sensor again (a new warm-up; results marked, no alarms)."""
        if model not in service.slots:
            raise CommandError("not_found", f"no model named {model!r} (configured: "
                                            f"{', '.join(service.slots) or 'none'})")
        try:
            return service.calibrate(model)
        except ModelError as e:
            raise CommandError("not_calibratable", str(e)) from None

    registry.add("model.list", model_list, read_only=True)
    registry.add("model.calibrate", model_calibrate,
                 {"model": Arg("str", required=True, pattern=ID_PATTERN)})
    registry.add("model.rollback", model_rollback,
                 {"model": Arg("str", required=True, pattern=ID_PATTERN)})
