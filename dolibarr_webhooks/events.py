"""Events: ``Event``, what a handler receives (independent of HTTP and of storage), and the
catalogue of Dolibarr's trigger codes, their labels, and the names some guides invent for them.

The catalogue's data is registered by the built-in ``catalogue`` plugin through the
``register_events`` hook; ``Catalogue`` is what the app builds from every plugin's
registrations.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from . import fastjson
from .labels import object_label

# prefix: (element, English noun, French noun, French noun is feminine)
FAMILIES: dict[str, tuple[str, str, str, bool]] = {
    "COMPANY": ("societe", "Third party", "Tiers", False),
    "COMPANY_RIB": ("societe_rib", "Bank account of third party", "Compte bancaire du tiers", False),
    "CONTACT": ("contact", "Contact", "Contact", False),
    "BILL": ("facture", "Invoice", "Facture", True),
    "BILLREC": ("facturerec", "Recurring invoice template", "Modèle de facture récurrente", False),
    "BILL_SUPPLIER": ("invoice_supplier", "Supplier invoice", "Facture fournisseur", True),
    "PROPAL": ("propal", "Proposal", "Proposition commerciale", True),
    "PROPOSAL_SUPPLIER": ("supplier_proposal", "Supplier price request", "Demande de prix fournisseur", True),
    "ORDER": ("commande", "Order", "Commande", True),
    "ORDER_SUPPLIER": ("order_supplier", "Purchase order", "Commande fournisseur", True),
    "PAYMENT_CUSTOMER": ("payment", "Customer payment", "Paiement client", False),
    "PAYMENT_SUPPLIER": ("payment_supplier", "Supplier payment", "Paiement fournisseur", False),
    "PRODUCT": ("product", "Product", "Produit", False),
    "PROJECT": ("project", "Project", "Projet", False),
    "TASK": ("project_task", "Task", "Tâche", True),
    "MEMBER": ("member", "Member", "Adhérent", False),
    "MEMBER_SUBSCRIPTION": ("subscription", "Membership subscription", "Cotisation", True),
    "TICKET": ("ticket", "Ticket", "Ticket", False),
    "USER": ("user", "User", "Utilisateur", False),
    "SHIPPING": ("shipping", "Shipment", "Expédition", True),
    "RECEPTION": ("reception", "Reception", "Réception", True),
    "FICHINTER": ("fichinter", "Intervention", "Intervention", True),
    "CONTRACT": ("contrat", "Contract", "Contrat", False),
    "ACTION": ("action", "Agenda event", "Événement", False),
    "EXPENSE_REPORT": ("expensereport", "Expense report", "Note de frais", True),
    "HOLIDAY": ("holiday", "Leave request", "Demande de congé", True),
    "BOM": ("bom", "Bill of materials", "Nomenclature", True),
    "MRP_MO": ("mo", "Manufacturing order", "Ordre de fabrication", False),
    "LINEBILL": ("facturedet", "Invoice line", "Ligne de facture", True),
    "LINEPROPAL": ("propaldet", "Proposal line", "Ligne de proposition", True),
    "LINEORDER": ("commandedet", "Order line", "Ligne de commande", True),
    "PAYMENT": ("payment", "Payment", "Paiement", False),
    "BANKACCOUNT": ("bank_account", "Bank account", "Compte bancaire", False),
    "CATEGORY": ("category", "Category", "Catégorie", True),
}

# action: (English, French masculine, French feminine)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "CREATE": ("created", "créé", "créée"),
    "INSERT": ("added", "ajouté", "ajoutée"),
    "MODIFY": ("modified", "modifié", "modifiée"),
    "DELETE": ("deleted", "supprimé", "supprimée"),
    "VALIDATE": ("validated", "validé", "validée"),
    "UNVALIDATE": ("set back to draft", "repassé en brouillon", "repassée en brouillon"),
    "SENTBYMAIL": ("sent by email", "envoyé par courriel", "envoyée par courriel"),
    "PAYED": ("paid", "payé", "payée"),
    "PAID": ("paid", "payé", "payée"),
    "CANCEL": ("cancelled", "annulé", "annulée"),
    "CANCELED": ("cancelled", "annulé", "annulée"),
    "CLOSE": ("closed", "clôturé", "clôturée"),
    "CLOSED": ("closed", "clôturé", "clôturée"),
    "CLOSE_SIGNED": ("signed", "signé", "signée"),
    "CLOSE_REFUSED": ("refused", "refusé", "refusée"),
    "CLASSIFY_BILLED": ("classified billed", "classé facturé", "classée facturée"),
    "CLASSIFY_UNBILLED": ("classified unbilled", "classé non facturé", "classée non facturée"),
    "APPROVE": ("approved", "approuvé", "approuvée"),
    "REFUSE": ("refused", "refusé", "refusée"),
    "SUBMIT": ("submitted", "soumis", "soumise"),
    "RECEIVE": ("received", "reçu", "reçue"),
    "REOPEN": ("reopened", "rouvert", "rouverte"),
    "RESILIATE": ("terminated", "résilié", "résiliée"),
    "EXCLUDE": ("excluded", "exclu", "exclue"),
    "ASSIGNED": ("assigned", "assigné", "assignée"),
    "ENABLEDISABLE": ("enabled or disabled", "activé ou désactivé", "activée ou désactivée"),
    "NEW_PASSWORD": ("given a new password", "a un nouveau mot de passe", "a un nouveau mot de passe"),
    "PRICE_MODIFY": ("price modified", "prix modifié", "prix modifié"),
    "PRODUCED": ("produced", "produit", "produite"),
    "AUTOCREATEBILL": ("generated an invoice", "a généré une facture", "a généré une facture"),
    "ADD_TO_BANK": ("recorded in the bank account", "enregistré en banque", "enregistrée en banque"),
    "LINK": ("linked", "lié", "liée"),
    "UNLINK": ("unlinked", "délié", "déliée"),
}

# What a code says happened to its object, by action: Dolibarr posts the object as it was
# *before* (a *_VALIDATE body still has the draft status, a *_CANCEL the previous one).
IMPLIED_STATES: dict[str, str] = {
    "VALIDATE": "validated", "UNVALIDATE": "draft", "PAYED": "paid", "PAID": "paid",
    "CANCEL": "cancelled", "CANCELED": "cancelled", "CLOSE_SIGNED": "signed", "CLOSE_REFUSED": "refused",
    "CLOSE": "closed", "CLOSED": "closed", "CLASSIFY_BILLED": "billed", "CLASSIFY_UNBILLED": "unbilled",
    "DELETE": "deleted", "APPROVE": "approved", "REFUSE": "refused", "SUBMIT": "submitted",
    "RECEIVE": "received", "REOPEN": "reopened", "RESILIATE": "terminated", "EXCLUDE": "excluded",
    "PRODUCED": "produced",
}

# Dolibarr's status numbers for the states above, where its classes define them
# (Facture::STATUS_*, Propal::STATUS_*, Commande::STATUS_*, Project::STATUS_*...).
IMPLIED_STATUSES: dict[str, int] = {
    "BILL_VALIDATE": 1, "BILL_UNVALIDATE": 0, "BILL_PAYED": 2, "BILL_CANCEL": 3,
    "BILL_SUPPLIER_VALIDATE": 1, "BILL_SUPPLIER_UNVALIDATE": 0, "BILL_SUPPLIER_PAYED": 2,
    "BILL_SUPPLIER_CANCEL": 3,
    "PROPAL_VALIDATE": 1, "PROPAL_CLOSE_SIGNED": 2, "PROPAL_CLOSE_REFUSED": 3, "PROPAL_CLASSIFY_BILLED": 4,
    "ORDER_VALIDATE": 1, "ORDER_CLOSE": 3, "ORDER_CANCEL": -1,
    "PROJECT_VALIDATE": 1, "PROJECT_CLOSE": 2,
    "SHIPPING_VALIDATE": 1, "SHIPPING_CLOSED": 2,
}

# Dolibarr's module (Setup > Modules) by the source folder that fires a code (triggers.json).
MODULES: dict[str, str] = {
    "societe": "Third parties", "contact": "Third parties", "facture": "Invoices", "fourn": "Vendors",
    "propal": "Commercial proposals", "supplier_proposal": "Vendor commercial proposals",
    "commande": "Sales orders", "paiement": "Invoices", "product": "Products", "projet": "Projects",
    "adherents": "Members", "ticket": "Tickets", "user": "Users & groups", "expedition": "Shipments",
    "reception": "Receptions", "fichinter": "Interventions", "contrat": "Contracts", "action": "Agenda",
    "expensereport": "Expense reports", "holiday": "Leave requests", "bom": "Bills of materials",
    "mrp": "Manufacturing orders", "bank": "Banks & cash", "categories": "Tags/categories",
    "webhook": "Webhooks",
}

TEST_CODE = "TEST_TRIGGER_CODE"

# Names some guides use, and the real prefixes. PROPOSAL_SUPPLIER_* is real and stays as is.
ALIAS_PREFIXES = {"THIRDPARTY_": "COMPANY_", "INVOICE_": "BILL_", "PROPOSAL_": "PROPAL_"}
NOT_ALIASED = ("PROPOSAL_SUPPLIER_",)
ALIAS_ACTIONS = {"PAID": "PAYED"}  # BILL_PAYED is Dolibarr's spelling


def canonical_code(code: str) -> str:
    """The Dolibarr trigger code for ``code``, which may use a guide's invented name."""
    code = code.strip().upper()
    if code.startswith(NOT_ALIASED):
        return code
    for alias, real in ALIAS_PREFIXES.items():
        if code.startswith(alias):
            action = code[len(alias):]
            return real + ALIAS_ACTIONS.get(action, action)
    return code


def matches(code: str, patterns: Iterable[str] | None) -> bool:
    """Whether ``code`` is handled by ``patterns`` (exact codes or ``BILL_*``); ``None`` means all."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(code, canonical_code(p)) for p in patterns)


def noun_and_verb(code: str, language: str = "en") -> tuple[str, str] | None:
    """``("Invoice", "paid")`` for ``BILL_PAYED``; ``None`` for a code of unknown shape."""
    split = split_code(code)
    if split is None:
        return None
    family, action = split
    _, noun_en, noun_fr, feminine = FAMILIES[family]
    verb_en, verb_fr_m, verb_fr_f = ACTIONS[action]
    if language == "fr":
        return noun_fr, (verb_fr_f if feminine else verb_fr_m)
    return noun_en, verb_en


def implied_state(code: str) -> str | None:
    """``validated`` for ``BILL_VALIDATE``...; None when the code says nothing of a state."""
    split = split_code(code)
    return IMPLIED_STATES.get(split[1]) if split else None


def implied_status(code: str) -> int | None:
    """Dolibarr's status number after ``code``, where the catalogue knows it."""
    return IMPLIED_STATUSES.get(code)


def label(code: str, language: str = "en") -> str:
    """A human label for a code, from its family and action, or the code itself."""
    words = noun_and_verb(code, language)
    return " ".join(words) if words else code


def split_code(code: str) -> tuple[str, str] | None:
    """``(family, action)`` for a code made of a known family and action, longest family first."""
    # The longest family ends at the last underscore that still leaves a known family and
    # action: a lookup per underscore, from the right (every plugin's summary asks, for
    # each event: sorting the families each time was 8 % of a worker's Python time).
    cut = len(code)
    while (cut := code.rfind("_", 0, cut)) > 0:
        family, action = code[:cut], code[cut + 1:]
        if family in FAMILIES and action in ACTIONS:
            return family, action
    return None


@dataclass(frozen=True)
class DolibarrCode:
    """One entry of triggers.json (see triggers_from_source)."""

    code: str
    element: str
    module: str  # Dolibarr's module that must be on for the code to be fired
    fired: tuple[str, ...]  # releases whose source calls it
    offered: tuple[str, ...]  # releases whose target form offers it

    @property
    def never_fired(self) -> bool:
        """Offered by Dolibarr's form but fired by no release: a target subscribed to it gets nothing."""
        return bool(self.offered) and not self.fired


def dolibarr_codes() -> list[DolibarrCode]:
    """Every Dolibarr code of ``triggers.json``, in code order."""
    import json
    from pathlib import Path

    data = json.loads(Path(__file__).with_name("triggers.json").read_text(encoding="utf-8"))
    return [DolibarrCode(code, entry["element"], MODULES.get(entry["module"], entry["module"]),
                         tuple(entry["fired"]), tuple(entry["offered"]))
            for code, entry in sorted(data["codes"].items())]


@dataclass(frozen=True)
class EventType:
    code: str
    element: str
    label_en: str
    label_fr: str
    offered: bool = False
    aliases: tuple[str, ...] = ()
    plugin: str = ""  # who registered it
    module: str = ""  # the Dolibarr module that fires it
    never_fired: bool = False  # offered by Dolibarr's target form, fired by no release


@dataclass
class Catalogue:
    """Every event type registered by plugins, with alias lookup."""

    types: dict[str, EventType] = field(default_factory=dict)

    def add(self, event_type: EventType) -> None:
        if event_type.code in self.types:
            raise ValueError(
                f"event {event_type.code} registered twice, by {self.types[event_type.code].plugin} "
                f"and {event_type.plugin}"
            )
        self.types[event_type.code] = event_type

    def get(self, code: str) -> EventType | None:
        return self.types.get(canonical_code(code))

    def __iter__(self):
        return iter(sorted(self.types.values(), key=lambda t: t.code))

    def __len__(self) -> int:
        return len(self.types)


# -- the event ---------------------------------------------------------------------------
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
