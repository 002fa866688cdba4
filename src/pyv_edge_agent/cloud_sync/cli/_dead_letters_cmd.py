"""``cloud-sync dead-letters``: list the dead letters, or requeue or drop them."""

import argparse
from typing import Any, List

from .. import DeadLetter
from ._common import EXIT_OK, UsageError, open_queue, print_json, shorten, show_entries
from ._render import Output, human_age


def cmd_dead_letters(args: argparse.Namespace, out: Output) -> int:
    """``cloud-sync dead-letters``: list, requeue or drop the items that could not be delivered."""
    if (args.requeue or args.drop) and not (args.ids or args.all):
        raise UsageError("name the dead letters with --ids, or pass --all")
    if (args.ids or args.all) and not (args.requeue or args.drop):
        raise UsageError("--ids and --all go with --requeue or --drop")
    if args.ids and args.all:
        raise UsageError("give --ids or --all, not both")
    ids = None if args.all else args.ids
    destination = args.destination
    with open_queue(args.db, args) as queue:
        if args.requeue or args.drop:
            verb = "requeued" if args.requeue else "dropped"
            if args.requeue:
                count = queue.requeue_dead_letters(ids, destination=destination)
            else:
                count = queue.drop_dead_letters(ids, destination=destination)
            if args.json:
                print_json(out, {verb: count})
            else:
                out.line(f"{verb} {count} dead letters")
            return EXIT_OK
        letters = queue.dead_letters(limit=args.n, destination=destination)
        # Whose each letter is, in a file with destinations (unless one was asked for).
        whose = bool(queue.destinations) and destination is None
    headers = ["id", "priority", *(["destination"] if whose else []), "status", "last error", "dead since", "payload"]

    def cells(letter: DeadLetter, now: float) -> List[Any]:
        status = "-" if letter.last_status is None else letter.last_status
        owner = [letter.destination] if whose else []
        return [*owner, status, shorten(letter.last_error or "-", 40), human_age(letter.dead_at, now)]

    title = f"{len(letters)} dead letters" + ("" if destination is None else f" of {destination}")
    return show_entries(out, args.json, letters, headers, title, cells, 40)
