"""The outcome of a delivery attempt, and the reason cards the driver scans to give one.

Every POD records one attempt at a parcel (docs/pod.md, docs/outcomes.md):

=====================  ==========  ===============================================
outcome                delivery?   when
=====================  ==========  ===============================================
``delivered``          yes         handed over (the default: a parcel scanned alone)
``safe_place``         yes         left in a safe place the recipient agreed to
``neighbour``          yes         left with a neighbour
``not_home``           no          nobody answered
``refused``            no          the recipient refused it
``address_not_found``  no          the address could not be found
``damaged``            no          the parcel is damaged, not handed over
``access_problem``     no          no way in (gate, entry code, dog, ...)
=====================  ==========  ===============================================

A failed attempt is not a delivery: the parcel stays deliverable, and a later
successful attempt is a new POD in the chain. Safe place and neighbour are deliveries
(the parcel has left the van for good), told apart so that backends can tell the
recipient where it is. A POD signed before outcomes existed has no ``outcome`` claim:
it reads as ``delivered``.

The driver gives an outcome without a keyboard, by scanning a printed reason card
(``fleet-agent cards``). A card's code is :data:`CARD_PREFIX` followed by the outcome
in capitals (``FLEET-REASON:NOT_HOME``), which :func:`~.parcels.parse_scan` reads as
a plain code; a manifest may not list a parcel in that namespace (the manifest parser
refuses it), so a card can never be taken for a parcel nor a parcel for a card.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from firmware_agent.contract.errors import ContractError

Outcome = Literal[
    "delivered",
    "safe_place",
    "neighbour",
    "not_home",
    "refused",
    "address_not_found",
    "damaged",
    "access_problem",
]
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
DELIVERED: Final[Outcome] = "delivered"
# The outcomes that are deliveries: the parcel has left the van for good.
SUCCESSFUL_OUTCOMES: Final[frozenset[Outcome]] = frozenset({"delivered", "safe_place", "neighbour"})
# What a reason card can say: every outcome but the default one, which is a parcel
# scanned alone.
CARD_OUTCOMES: Final[tuple[Outcome, ...]] = tuple(o for o in OUTCOMES if o != DELIVERED)
CARD_PREFIX: Final = "FLEET-REASON:"

LABELS: Final[dict[Outcome, str]] = {
    "delivered": "Delivered",
    "safe_place": "Left in a safe place",
    "neighbour": "Left with a neighbour",
    "not_home": "Not home",
    "refused": "Refused",
    "address_not_found": "Address not found",
    "damaged": "Damaged",
    "access_problem": "Access problem",
}


class ReasonCardError(ContractError, ValueError):
    """A code in the reason-card namespace that names no outcome a card can give."""


def is_delivery(outcome: Outcome) -> bool:
    """Whether an attempt with ``outcome`` delivered the parcel."""
    return outcome in SUCCESSFUL_OUTCOMES


def card_code(outcome: Outcome) -> str:
    """The text a reason card's barcode encodes for ``outcome``."""
    if outcome not in CARD_OUTCOMES:
        raise ValueError(f"no reason card says {outcome!r}")
    return CARD_PREFIX + outcome.upper()


def is_card_code(code: str) -> bool:
    """Whether ``code`` (a canonical code, :func:`~.parcels.parse_scan`'s ``code``) is in
    the reason-card namespace: never a parcel."""
    return code[: len(CARD_PREFIX)].upper() == CARD_PREFIX


def card_outcome(code: str) -> Outcome | None:
    """The outcome a scanned code gives, or None if it is not a reason card.

    :class:`ReasonCardError` for a code in the card namespace naming no card's outcome
    (a damaged or foreign card): it is neither a parcel nor a reason.
    """
    if not is_card_code(code):
        return None
    name = code[len(CARD_PREFIX) :].strip().lower()
    for outcome in CARD_OUTCOMES:
        if outcome == name:
            return outcome
    raise ReasonCardError(f"{code[:40]!r} is a reason card naming no known outcome")
