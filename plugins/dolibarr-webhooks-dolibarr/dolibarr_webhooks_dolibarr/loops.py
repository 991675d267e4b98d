"""No loops: recognise the events that the plugin's own API calls caused.

Every agenda event the plugin writes fires ``ACTION_CREATE`` in Dolibarr, every order it creates
``ORDER_CREATE``; if Dolibarr posts those to the service, another plugin delivers them and the
write-back would record that delivery with a new agenda event, forever. Agenda events are never
written back, whoever made them (``agenda.target``); beyond that, an event whose acting user is
the plugin's API user is not acted on.

Dolibarr's body does not say who acted, but the object may carry the user of the step the
trigger code names. In the bodies captured from Dolibarr 22.0.4: ``ACTION_CREATE`` has
``authorid``, ``*_MODIFY`` ``user_modification_id``, objects read from the database
``user_creation_id`` or ``user_author_id``, a new third party none at all. ``*_VALIDATE`` is
posted with the object as it was before, ``PROPAL_CLOSE_SIGNED`` without the closing user: for
those the body may not tell (the plugin's calls never cause them).
"""

from __future__ import annotations

from dolibarr_webhooks import Event
from dolibarr_webhooks.pluginkit import split_code

from .api import row_id

# The object's fields naming the user of each kind of step, by the first word of the action.
ACTING_USER_FIELDS = {
    "CREATE": ("user_creation_id", "user_author_id", "fk_user_author", "fk_user_creat", "authorid"),
    "MODIFY": ("user_modification_id", "fk_user_modif", "usermodid"),
    "VALIDATE": ("user_validation_id", "fk_user_valid"),
    "CLOSE": ("user_closing_id", "fk_user_cloture"),
}


def acting_user(event: Event) -> int | None:
    """The id of the Dolibarr user who did what the trigger code says, when the body tells."""
    split = split_code(event.trigger_code)
    step = split[1].split("_")[0] if split else event.trigger_code.rsplit("_", 1)[-1]
    for name in ACTING_USER_FIELDS.get(step, ()):
        user = row_id(event.object.get(name))
        if user is not None:
            return user
    return None


def own_echo(event: Event, api_user: int) -> str | None:
    """Why ``event`` was caused by the plugin's API calls, or None when it was not."""
    user = acting_user(event)
    if user is not None and user == api_user:
        return f"{event.trigger_code} was done by the plugin's own API user (id {api_user})"
    return None
