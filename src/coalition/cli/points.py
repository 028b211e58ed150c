"""``coalition enroll``, ``earn``, ``reward``, ``reverse``, ``redeem``, ``transfer``,
``adjust``, ``revoke``, ``expire``, ``balance``, ``lots``, ``history``: a member's points,
operated on a running node over gRPC.

Writes print the entry as JSON and take ``--idempotency-key`` (see ``cli.client``).
"""

from __future__ import annotations

import argparse
from typing import Any

from coalition.cli.client import add_client_command, paged, reads, written


def add_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add the points commands to ``sub``; ``conn`` is the connection options' parent."""
    write = argparse.ArgumentParser(add_help=False, parents=[conn])
    write.add_argument("--idempotency-key", help="retry-safe key (default: a fresh one)")
    _add_earning(sub, write)
    _add_spending(sub, write)
    _add_corrections(sub, write, conn)
    _add_reads(sub, conn)


def _add_earning(sub: Any, write: argparse.ArgumentParser) -> None:
    p = add_client_command(sub, "enroll", "enroll a member", write)
    p.add_argument("member")
    p.set_defaults(func=written(lambda c, a, k: c.enroll(a.member, idempotency_key=k)))

    p = add_client_command(sub, "earn", "earn points for a purchase", write)
    p.add_argument("member")
    p.add_argument("--reference", required=True)
    p.add_argument("--spend-minor", type=int, required=True, help="e.g. 12999 = 129.99 EUR")
    p.add_argument("--category", default="")
    p.set_defaults(
        func=written(
            lambda c, a, k: c.earn_purchase(
                a.member, a.reference, a.spend_minor, a.category, idempotency_key=k
            )
        )
    )

    p = add_client_command(sub, "reward", "give a behaviour reward (signup, review, ...)", write)
    p.add_argument("member")
    p.add_argument("--event", required=True)
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=written(
            lambda c, a, k: c.earn_reward(a.member, a.event, a.reference, idempotency_key=k)
        )
    )

    p = add_client_command(sub, "reverse", "claw back a refunded purchase's points", write)
    p.add_argument("member")
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=written(lambda c, a, k: c.reverse_purchase(a.member, a.reference, idempotency_key=k))
    )


def _add_spending(sub: Any, write: argparse.ArgumentParser) -> None:
    p = add_client_command(sub, "redeem", "spend a member's points", write)
    p.add_argument("member")
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--reference", required=True)
    p.set_defaults(
        func=written(lambda c, a, k: c.redeem(a.member, a.amount, a.reference, idempotency_key=k))
    )

    p = add_client_command(sub, "transfer", "move points to another member", write)
    p.add_argument("member")
    p.add_argument("--to", required=True)
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=written(
            lambda c, a, k: c.transfer(a.member, a.to, a.amount, a.note, idempotency_key=k)
        )
    )


def _add_corrections(
    sub: Any, write: argparse.ArgumentParser, conn: argparse.ArgumentParser
) -> None:
    p = add_client_command(sub, "adjust", "operator correction (negative amount debits)", write)
    p.add_argument("member")
    p.add_argument("--amount", type=int, required=True)
    p.add_argument("--operator", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=written(
            lambda c, a, k: c.adjust(a.member, a.amount, a.operator, a.note, idempotency_key=k)
        )
    )

    p = add_client_command(sub, "revoke", "revoke one earn entry's points", write)
    p.add_argument("member")
    p.add_argument("--entry", required=True, help="the earn entry id")
    p.add_argument("--operator", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(
        func=written(
            lambda c, a, k: c.revoke(a.member, a.entry, a.operator, a.note, idempotency_key=k)
        )
    )

    p = add_client_command(sub, "expire", "expire every due lot now", conn)
    p.set_defaults(func=reads(lambda c, a: c.run_expiry()))


def _add_reads(sub: Any, conn: argparse.ArgumentParser) -> None:
    p = add_client_command(sub, "balance", "a member's balance and tier", conn)
    p.add_argument("member")
    p.set_defaults(func=reads(lambda c, a: c.balance(a.member)))

    p = add_client_command(sub, "lots", "a member's lots, oldest first, a page at a time", conn)
    p.add_argument("member")
    p.add_argument("--limit", type=int, default=1000, help="lots a page (1..1000)")
    p.add_argument("--page", help="the next page's token, as the previous page printed")
    p.set_defaults(func=reads(lambda c, a: paged(*c.lots_page(a.member, a.limit, a.page))))

    p = add_client_command(
        sub, "history", "a member's entries, newest first, a page at a time", conn
    )
    p.add_argument("member")
    p.add_argument("--limit", type=int, default=100, help="entries a page (1..1000)")
    p.add_argument("--page", help="the next (older) page's token, as the previous page printed")
    p.set_defaults(func=reads(lambda c, a: paged(*c.history_page(a.member, a.limit, a.page))))
