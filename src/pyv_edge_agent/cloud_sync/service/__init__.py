"""``cloud-sync serve``: the queue as a gateway service that local programs feed over a
Unix socket or loopback HTTP.

``config`` reads and checks the TOML file, ``uploaders`` builds each destination's
uploader, ``listen`` and ``api`` are the bounded HTTP server and its routes (aiohttp, the
``serve`` extra), ``notify`` speaks systemd's notify protocol, and ``daemon`` runs it all.
"""
