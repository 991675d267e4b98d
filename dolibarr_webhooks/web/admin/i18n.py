"""The dashboard in English and French: the browser's language, unless the person chose.

A catalogue of the French for each English text the templates show; the trigger codes'
labels and the events' summaries come in French from the catalogue plugin's ``label_fr``
and ``describe.summary(event, "fr")``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from flask import request, session

LANGUAGES = ("en", "fr")

FRENCH: dict[str, str] = {
    "Overview": "Vue d'ensemble",
    "Events": "Événements",
    "Failures": "Échecs",
    "Quarantine": "Quarantaine",
    "Plugins": "Extensions",
    "Log out": "Se déconnecter",
    "Log in": "Se connecter",
    "User name": "Identifiant",
    "Password": "Mot de passe",
    "Wrong user name or password.": "Identifiant ou mot de passe incorrect.",
    "Too many wrong passwords from your address: try again in a minute.":
        "Trop de mots de passe erronés depuis votre adresse : réessayez dans une minute.",
    "Dolibarr webhooks": "Webhooks Dolibarr",
    "Code": "Code",
    "Every code": "Tous les codes",
    "Source": "Source",
    "Every source": "Toutes les sources",
    "Delivery status": "État des livraisons",
    "Any status": "Tous les états",
    "pending": "en attente",
    "running": "en cours",
    "failed": "en échec",
    "dead": "abandonnée",
    "delivered": "livrée",
    "accepted": "accepté",
    "duplicate": "doublon",
    "quarantined": "en quarantaine",
    "From": "Du",
    "To": "Au",
    "Search": "Rechercher",
    "Reference, third party name or event id": "Référence, nom du tiers ou identifiant d'événement",
    "Filter": "Filtrer",
    "Clear": "Effacer",
    "When": "Quand",
    "What happened": "Ce qui s'est passé",
    "Deliveries": "Livraisons",
    "No event matches.": "Aucun événement ne correspond.",
    "Older events": "Événements plus anciens",
    "Newest events": "Événements les plus récents",
    "no plugin": "aucune extension",
    "duplicate of": "doublon de",
    "Open in Dolibarr": "Ouvrir dans Dolibarr",
    "Received": "Reçu",
    "from": "depuis",
    "Payload (stored, credentials masked)": "Contenu (tel que stocké, identifiants masqués)",
    "Replay": "Relancer",
    "Replay for every plugin": "Relancer pour toutes les extensions",
    "Deliver": "Livrer",
    "handles this code, no delivery yet": "traite ce code, pas encore de livraison",
    "Attempt": "Tentative",
    "Run": "Série",
    "Started": "Début",
    "Duration": "Durée",
    "Outcome": "Résultat",
    "Worker": "Worker",
    "Error": "Erreur",
    "attempt": "tentative",
    "attempts": "tentatives",
    "Dead": "Abandonnées",
    "No attempt yet.": "Aucune tentative pour l'instant.",
    "delivery scheduled again": "livraison reprogrammée",
    "deliveries scheduled again": "livraisons reprogrammées",
    "No event with this id.": "Aucun événement avec cet identifiant.",
    "Plugin": "Extension",
    "Every plugin": "Toutes les extensions",
    "Failed and dead": "En échec et abandonnées",
    "Dead only": "Abandonnées seulement",
    "Failed only": "En échec seulement",
    "Count": "Nombre",
    "First": "Première",
    "Last": "Dernière",
    "Latest event": "Dernier événement",
    "Replay all shown": "Tout relancer",
    "Nothing failed.": "Aucun échec.",
    "Bodies that could not be parsed": "Corps illisibles",
    "Size": "Taille",
    "bytes": "octets",
    "Reprocess": "Retraiter",
    "Nothing to re-process: Dolibarr could not encode the object as JSON.":
        "Rien à retraiter : Dolibarr n'a pas pu encoder l'objet en JSON.",
    "Reprocess all": "Tout retraiter",
    "Nothing in quarantine.": "Rien en quarantaine.",
    "Version": "Version",
    "Status": "État",
    "enabled": "activée",
    "disabled": "désactivée",
    "Handles": "Traite",
    "every event": "tous les événements",
    "no event": "aucun événement",
    "Queue": "File",
    "Failure rate (24 h)": "Taux d'échec (24 h)",
    "What check reports": "Ce que dit check",
    "Events per hour, last 24 h": "Événements par heure, dernières 24 h",
    "Delivery latency, last 24 h (mean per hour, seconds)":
        "Délai de livraison, dernières 24 h (moyenne par heure, secondes)",
    "Oldest waiting delivery": "Plus ancienne livraison en attente",
    "none": "aucune",
    "Worker alive": "Worker actif",
    "Workers": "Workers",
    "last heartbeat": "dernier signe de vie",
    "No worker has been seen: deliveries wait.": "Aucun worker n'a été vu : les livraisons attendent.",
    "no worker alive": "aucun worker actif",
    "Events stored": "Événements stockés",
    "duplicates": "doublons",
    "Refreshed every few seconds.": "Actualisé toutes les quelques secondes.",
    "The form has expired or did not come from this page: try again.":
        "Le formulaire a expiré ou ne vient pas de cette page : recommencez.",
    "Not found": "Introuvable",
    "The dashboard failed; the error is in the service's log.":
        "Le tableau de bord a échoué ; l'erreur est dans le journal du service.",
    "The store is unavailable; try again in a moment.":
        "Le stockage est indisponible ; réessayez dans un instant.",
    "test": "test",
    "other": "autres",
    "Store": "Stockage",
    "Language": "Langue",
    "reprocessed": "retraité",
    "never": "jamais",
}


def language() -> str:
    """``?lang=`` (remembered in the session), else the session's, else the browser's."""
    chosen = request.args.get("lang")
    if chosen in LANGUAGES:
        session["lang"] = chosen
        return chosen
    return session.get("lang") or request.accept_languages.best_match(LANGUAGES, "en") or "en"


def gettext(text: str) -> str:
    if language() == "fr":
        return FRENCH.get(text, text)
    return text


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(timestamp: float | None, now: float | None = None) -> str:
    """``3 min ago`` / ``il y a 3 min``."""
    if timestamp is None:
        return gettext("never")
    seconds = max(0, int((now or time.time()) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or unit == "s":
            amount = f"{seconds // size} {unit if language() == 'en' or unit != 'd' else 'j'}"
            return f"il y a {amount}" if language() == "fr" else f"{amount} ago"
    return ""


def number(value: int | float) -> str:
    text = f"{value:,}"
    return text.replace(",", "\u202f") if language() == "fr" else text
