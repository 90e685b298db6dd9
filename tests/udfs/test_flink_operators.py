"""The learner operator's keyed state: no pickled type anywhere (restoring a checkpoint must not
run code), the state names and TTLs a restore matches by unchanged. Built without Flink running."""

import inspect

from pyflink.common import Types
from pyflink.common.typeinfo import MapTypeInfo

from streamrec.udfs import flink_operators
from streamrec.udfs.flink_operators import ShardLearner, _bytes_state, _map_state, state_descriptors

#: Types whose values PyFlink hands to Java as they are: a pickled one (PICKLED_BYTE_ARRAY, and
#: Row or Tuple types, which thread mode pickles too) is not among them.
PLAIN = [Types.STRING(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())]


def _value_types(desc):
    info = desc.type_info
    if isinstance(info, MapTypeInfo):
        return [info._key_type_info, info._value_type_info]
    return [info]


def test_no_state_descriptor_uses_a_pickled_type():
    descriptors = state_descriptors(ttl_ms=60_000)
    assert set(descriptors) == {"users", "items", "changelog", "reset-token", "exchanged"}
    for name, desc in descriptors.items():
        assert desc.name == name  # restored by name: never rename
        for info in _value_types(desc):
            assert any(info == plain for plain in PLAIN), f"state {name!r} holds {info}"


def test_the_maps_hold_bytes_and_keep_their_ttl():
    for name in ("users", "items"):
        desc = _map_state(name, 60_000)
        assert desc.type_info._value_type_info == Types.PRIMITIVE_ARRAY(Types.BYTE())
        assert desc._ttl_config is not None and desc._ttl_config.get_ttl().to_milliseconds() == 60_000
    assert state_descriptors(1)["changelog"]._ttl_config is None


def test_the_operator_opens_only_these_descriptors():
    source = inspect.getsource(flink_operators)
    assert "PICKLED_BYTE_ARRAY()" not in source and "import pickle" not in source
    open_source = inspect.getsource(ShardLearner.open)
    assert "Descriptor(" not in open_source and "state_descriptors(" in open_source


def test_bytes_state_leaves_other_state_implementations_alone():
    class ProcessModeState:  # process mode's coder (BinaryCoder) passes bytes already
        pass

    state = ProcessModeState()
    assert _bytes_state(state) is state and not hasattr(state, "_value_converter")
