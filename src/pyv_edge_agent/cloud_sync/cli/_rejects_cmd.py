"""``cloud-sync rejects``: list the MQTT messages ``cloud-sync serve`` kept because they
were not JSON objects (its rejects file, written by the service)."""

import argparse
import time

from ._common import EXIT_OK, print_json, shorten
from ._render import Output, human_age


def cmd_rejects(args: argparse.Namespace, out: Output) -> int:
    """``cloud-sync rejects FILE``: the newest ``-n`` messages of an MQTT rejects file."""
    from ..service.rejects import read

    rejects = read(args.file)
    shown = rejects[-args.n :]
    if args.json:
        print_json(out, [reject.to_dict() for reject in shown])
        return EXIT_OK
    now = time.time()
    rows = [
        [
            human_age(reject.at, now),
            shorten(reject.topic, 40),
            shorten(reject.reason, 50),
            reject.size,
            "(sealed queue: not kept)" if reject.payload is None else shorten(repr(reject.payload)[2:-1], 40),
        ]
        for reject in shown
    ]
    title = f"{len(rejects)} MQTT messages kept as rejects" + (
        f", the last {len(shown)}" if len(shown) < len(rejects) else ""
    )
    out.table(["kept", "topic", "reason", "bytes", "payload"], rows, title=title)
    return EXIT_OK
