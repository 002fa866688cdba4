"""Utilities for trying the queue out and testing against it: the reference ingest server
(``testing.ingest_server.IngestServer``) that the demo and the test suite post to. Not used
by the queue itself."""
