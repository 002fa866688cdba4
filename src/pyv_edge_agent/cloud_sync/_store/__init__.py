"""Everything that touches the queue file: the connection and its error translation
(``store``), statements (``sql``), schema and migration, opening, trust checks and
quarantine (``integrity``), storage limits, the queue's clock, group commit, dead letters,
batch keys, statistics, sealing and rekey. Knows nothing of uploaders or flushing."""
