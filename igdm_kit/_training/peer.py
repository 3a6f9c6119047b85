"""The trained peer's part of the training state (R2, PeerAiD): its weights, its optimizer's state and its
schedule, saved with every training state and given back on ``--resume``, so a resumed run continues both
models exactly (``_storage.train_state.model_state``, the student's own encoding)."""

from __future__ import annotations

import json
from typing import Any

from igdm_kit._storage.train_state import model_state, restore_model_state
from igdm_kit._training.events import Subscriber
from igdm_kit.interfaces.callbacks import Order


class PeerState(Subscriber):
    state_key = "peer"
    order = Order.FINITE + 40

    @classmethod
    def build(cls, options, ctx) -> PeerState | None:
        return cls(ctx.parts.peer) if ctx.parts.peer is not None else None  # no [peer]: nothing to keep

    def __init__(self, peer) -> None:
        self.peer = peer

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors, meta = model_state(self.peer.model, self.peer.optimizer, self.peer.scheduler)
        return {"meta": json.dumps(meta)}, tensors

    def load_state_dict(self, values, tensors) -> None:
        restore_model_state(tensors, json.loads(values["meta"]), self.peer.model, self.peer.optimizer,
                            self.peer.scheduler)
