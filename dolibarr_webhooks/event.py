"""``Event``: what a handler receives, independent of HTTP and of storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import fastjson
from .catalogue import implied_state, implied_status
from .labels import object_label

# Card pages relative to the Dolibarr root, by object type (``element``).
CARD_PATHS = {
    "societe": "societe/card.php?socid={id}",
    "contact": "contact/card.php?id={id}",
    "facture": "compta/facture/card.php?facid={id}",
    "propal": "comm/propal/card.php?id={id}",
    "commande": "commande/card.php?id={id}",
    "product": "product/card.php?id={id}",
    "project": "projet/card.php?id={id}",
    "payment": "compta/paiement/card.php?id={id}",
    "user": "user/card.php?id={id}",
    "member": "adherents/card.php?rowid={id}",
    "category": "categories/viewcat.php?id={id}",
    "bank_account": "compta/bank/card.php?id={id}",
    "shipping": "expedition/card.php?id={id}",
    "action": "comm/action/card.php?id={id}",
    "invoice_supplier": "fourn/facture/card.php?facid={id}",
    "order_supplier": "fourn/commande/card.php?id={id}",
    "ticket": "ticket/card.php?id={id}",
    "project_task": "projet/tasks/task.php?id={id}",
}


@dataclass(frozen=True)
class Event:
    """One Dolibarr trigger, scrubbed and stored, as handlers see it."""

    id: str
    trigger_code: str
    object: dict[str, Any]
    element: str | None = None
    object_id: str | None = None
    ref: str | None = None
    entity: str | None = None
    label: str | None = None  # what a person calls the object: labels.object_label
    source: str = "default"
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    body_sha256: str = ""
    test: bool = False
    sent_code: str | None = None  # the alias the sender used, when it was not the real code
    dolibarr_url: str | None = None  # the source's Dolibarr root URL, for links to cards

    @property
    def card_url(self) -> str | None:
        """Link to the object's card in Dolibarr, when the source's URL and the type are known."""
        path = CARD_PATHS.get(self.element or "")
        if not (self.dolibarr_url and path and self.object_id):
            return None
        return self.dolibarr_url.rstrip("/") + "/" + path.format(id=self.object_id)

    @property
    def state(self) -> str | None:
        """What the trigger code says happened to the object (``validated``, ``paid``,
        ``signed``, ``deleted``...). Dolibarr posts the object as it was before: on
        ``*_VALIDATE`` its ``status`` is still the draft's, on ``*_CANCEL`` the previous one.
        Read this, or the code, never ``object["status"]``."""
        return implied_state(self.trigger_code)

    @property
    def dolibarr_status(self) -> int | None:
        """Dolibarr's status number that the code implies, for the documents whose numbers
        are known (invoices, proposals, orders, projects...); None elsewhere."""
        return implied_status(self.trigger_code)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies the object, which costs more
        # than the rest of the ingest path for a 15 KB invoice.
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["received_at"] = self.received_at.isoformat()
        return data

    def to_json(self) -> str:
        return fastjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        data = dict(data)
        received = data.get("received_at")
        if isinstance(received, str):
            data["received_at"] = datetime.fromisoformat(received)
        if not data.get("label") and isinstance(data.get("object"), dict):
            # Stored before labels existed: name it by today's rule.
            data["label"] = object_label(str(data.get("trigger_code") or ""), data["object"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> Event:
        return cls.from_dict(fastjson.loads(text))
