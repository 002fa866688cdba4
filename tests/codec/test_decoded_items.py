"""Items decoded by either backend are ordinary ``QueueItem`` dataclass instances: the
compiled twin builds them without calling ``__init__``, so every field must still be set,
in declaration order, exactly as ``__init__`` would."""

import dataclasses
import pickle
from types import ModuleType

from pyv_edge_agent.cloud_sync import Priority, QueueItem


def test_decoded_item_is_the_dataclass_built_by_init(codec: ModuleType) -> None:
    row = (7, '{"a":1}', 2, 1.5, 60, 3, 9.25)
    (item,) = codec.decode_rows([row])
    expected = QueueItem(7, {"a": 1}, Priority.ANOMALY, 1.5, 60, 3, 9.25)
    assert type(item) is QueueItem and item == expected
    assert list(vars(item)) == [field.name for field in dataclasses.fields(QueueItem)]
    assert pickle.dumps(item) == pickle.dumps(expected)
    assert repr(item) == repr(expected) and item.to_dict() == expected.to_dict()
