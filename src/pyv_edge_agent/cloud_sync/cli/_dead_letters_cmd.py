"""``cloud-sync dead-letters``: list the dead letters, or requeue or drop them."""

import argparse
import time

import orjson

from ._common import EXIT_OK, UsageError, open_queue, print_json, shorten
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
    with open_queue(args.db, args) as queue:
        if args.requeue or args.drop:
            verb = "requeued" if args.requeue else "dropped"
            count = queue.requeue_dead_letters(ids) if args.requeue else queue.drop_dead_letters(ids)
            if args.json:
                print_json(out, {verb: count})
            else:
                out.line(f"{verb} {count} dead letters")
            return EXIT_OK
        letters = queue.dead_letters(limit=args.n)
    if args.json:
        print_json(out, [letter.to_dict() for letter in letters])
        return EXIT_OK
    now = time.time()
    rows = [
        [
            letter.id,
            letter.priority.name,
            "-" if letter.last_status is None else letter.last_status,
            shorten(letter.last_error or "-", 40),
            human_age(letter.dead_at, now),
            shorten(orjson.dumps(letter.payload, default=str).decode(), 40),
        ]
        for letter in letters
    ]
    out.table(
        ["id", "priority", "status", "last error", "dead since", "payload"], rows, title=f"{len(rows)} dead letters"
    )
    return EXIT_OK
