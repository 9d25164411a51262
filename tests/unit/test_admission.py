"""Admission by cost (core/admission.py): the load model and what each check refuses, with the figures."""

from __future__ import annotations

import math

import pytest

from callrec import config
from callrec.config import ConfigError, load_config
from callrec.core.admission import Admission, Capacity
from callrec.core.errors import ErrorCode, ResourceExhausted


def admission(participants: int, composites: int, capacity: Capacity, calls: int = 0) -> Admission:
    return Admission(capacity, lambda: participants, lambda: composites, node="node 'n1'", calls=lambda: calls)


def test_the_load_adds_audio_and_video_costs() -> None:
    cap = Capacity(audio_participants=80, video_composites=2)
    assert admission(40, 0, cap).load() == pytest.approx(0.5)
    assert admission(40, 1, cap).load() == pytest.approx(1.0)
    assert admission(0, 0, Capacity()).load() == 0.0


def test_calls_cost_apart_from_their_participants() -> None:
    """1:1 calls cost more per participant than 10-person calls: a capacity fitted to both refuses each in time."""
    cap = Capacity(audio_participants=1000, calls=250, ceiling=0.8)
    ten_person = admission(800, 0, cap, calls=80)  # 0.8 + 0.32
    one_to_one = admission(400, 0, cap, calls=200)  # 0.4 + 0.8
    assert ten_person.load() == pytest.approx(1.12) and one_to_one.load() == pytest.approx(1.2)
    assert admission(400, 0, cap, calls=40).load() == pytest.approx(0.56)
    with pytest.raises(ResourceExhausted) as caught:
        admission(300, 0, cap, calls=150).check_open()  # 0.3 + 0.6 = 90 % with the new call's own 0.4 %
    for fragment in ("300 audio participants of 1000", "150 calls of 250", "admission_ceiling"):
        assert fragment in caught.value.message, caught.value.message
    # the same participants in 10-person calls leave room for one more call
    admission(300, 0, cap, calls=30).check_open()  # 0.3 + 0.12 + 0.004


def test_a_new_call_counts_its_own_cost() -> None:
    cap = Capacity(calls=10, ceiling=0.8)
    admission(0, 0, cap, calls=6).check_open()  # 7 calls of 10 with it: 70 %
    with pytest.raises(ResourceExhausted, match="80%"):
        admission(0, 0, cap, calls=7).check_open()  # 8 of 10: the ceiling
    assert admission(0, 0, cap, calls=7).full() and not admission(0, 0, cap, calls=6).full()


def test_without_a_per_call_cost_the_message_is_as_before() -> None:
    with pytest.raises(ResourceExhausted) as caught:
        admission(8, 0, Capacity(audio_participants=10), calls=3).check_open()
    assert "calls of" not in caught.value.message


def test_new_calls_stop_at_the_ceiling_and_say_why() -> None:
    cap = Capacity(audio_participants=10, video_composites=1, ceiling=0.8)
    admission(7, 0, cap).check_open()  # 70 %
    with pytest.raises(ResourceExhausted) as caught:
        admission(8, 0, cap).check_open()  # 80 %
    message = caught.value.message
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED
    for fragment in ("node 'n1' is full", "80%", "8 audio participants of 10", "admission_ceiling",
                     "another node"):
        assert fragment in message, message


def test_participants_of_admitted_calls_join_up_to_full_capacity() -> None:
    cap = Capacity(audio_participants=10, ceiling=0.8)
    admission(9, 0, cap).check_join()  # to 100 %
    with pytest.raises(ResourceExhausted, match="capacity_audio_participants"):
        admission(10, 0, cap).check_join()


def test_a_composite_starts_only_under_the_ceiling() -> None:
    cap = Capacity(audio_participants=10, video_composites=2, ceiling=0.8)
    admission(1, 0, cap).check_composite()  # 0.1 + 0.5 = 60 %
    with pytest.raises(ResourceExhausted, match="mp4 composite"):
        admission(4, 0, cap).check_composite()  # 0.4 + 0.5 = 90 % > 80 %


def test_no_capacity_means_no_cost_admission() -> None:
    idle = admission(10_000, 100, Capacity())
    idle.check_open()
    idle.check_join()
    idle.check_composite()


def test_capacity_settings_and_their_automatic_defaults() -> None:
    assert not load_config().capacity.enabled, "a single node admits by the count limits only"
    cluster = load_config({"database_url": "postgresql://u@127.0.0.1/db"}).capacity
    assert (cluster.audio_participants, cluster.video_composites, cluster.ceiling) == (
        config.CLUSTER_AUDIO_PARTICIPANTS, 1.0, 0.8)
    assert cluster.calls == config.CLUSTER_CALLS > 0, "cluster mode costs calls apart by default"
    own = load_config({"capacity_audio_participants": 40, "admission_ceiling": 0.5}).capacity
    assert (own.audio_participants, own.video_composites, own.ceiling, own.calls) == (40, 0.0, 0.5, 0.0)
    # a participant figure of one's own in cluster mode: the automatic per-call share was fitted to another one
    own_in_cluster = load_config({"database_url": "postgresql://u@127.0.0.1/db",
                                  "capacity_audio_participants": 40}).capacity
    assert (own_in_cluster.audio_participants, own_in_cluster.calls) == (40, 0.0)
    both = load_config({"capacity_audio_participants": 900, "capacity_calls": 300}).capacity
    assert (both.audio_participants, both.calls) == (900, 300) and both.enabled
    assert load_config({"capacity_calls": 50}).capacity.enabled
    with pytest.raises(ConfigError, match="capacity_calls must be >= 0"):
        load_config({"capacity_calls": -1})
    with pytest.raises(ConfigError, match="admission_ceiling"):
        load_config({"admission_ceiling": 1.5})
    with pytest.raises(ValueError, match="admission_ceiling"):
        Admission(Capacity(1, 1, 0), lambda: 0, lambda: 0)


def test_the_capacities_load_from_the_config_file(tmp_path) -> None:
    """The `[server]` keys of a TOML file, as a measured machine would set them (README, "Cluster mode")."""
    path = tmp_path / "callrec.toml"
    path.write_text("[server]\ncapacity_audio_participants = 794\ncapacity_calls = 329\n"
                    "capacity_video_composites = 2\nadmission_ceiling = 0.75\n")
    cap = load_config(config_file=path).capacity
    assert (cap.audio_participants, cap.calls, cap.video_composites, cap.ceiling) == (794, 329, 2, 0.75)
    # flags and environment variables win over the file, as for every setting
    assert load_config({"capacity_calls": 100}, config_file=path).capacity.calls == 100


def test_a_control_node_takes_no_call_and_is_never_a_spare(tmp_path) -> None:
    """`role = control` (issue 11): full whatever it holds, an infinite advertised load (no node relays a new call
    to it: `least_loaded` wants a load under the ceiling), and a refusal that says what the node is and what to do."""
    cap = load_config({"database_url": "postgresql://u@127.0.0.1/db", "role": "control"}).capacity
    assert not cap.takes_calls and cap.enabled
    admission = Admission(cap, lambda: 0, lambda: 0, node="node 'control1'", calls=lambda: 0)
    assert admission.full() and admission.load() == math.inf and not admission.load() < cap.ceiling
    with pytest.raises(ResourceExhausted, match=r"node 'control1' is a control node \(role = control\): it takes "
                       r"no calls.*--role control"):
        admission.check_open()
    # a node that takes calls, with room, is not full and advertises a finite load
    full_node = Admission(load_config({"database_url": "postgresql://u@127.0.0.1/db"}).capacity, lambda: 0, lambda: 0)
    assert not full_node.full() and full_node.load() == 0.0
    # the role from the file and the environment's flag, like every setting; only in cluster mode
    path = tmp_path / "callrec.toml"
    path.write_text('[server]\nrole = "control"\ndatabase_url = "postgresql://u@127.0.0.1/db"\n')
    assert load_config(config_file=path).role == "control"
    assert load_config({"role": "full"}, config_file=path).capacity.takes_calls
    with pytest.raises(ConfigError, match=r"role = control needs cluster mode.*--database-url"):
        load_config({"role": "control"})
    with pytest.raises(ConfigError, match="role must be one of full, control"):
        load_config({"role": "media"})
