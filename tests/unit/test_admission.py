"""Admission by cost (core/admission.py): the load model and what each check refuses, with the figures."""

from __future__ import annotations

import pytest

from callrec.config import ConfigError, load_config
from callrec.core.admission import Admission, Capacity
from callrec.core.errors import ErrorCode, ResourceExhausted


def admission(participants: int, composites: int, capacity: Capacity) -> Admission:
    return Admission(capacity, lambda: participants, lambda: composites, node="node 'n1'")


def test_the_load_adds_audio_and_video_costs() -> None:
    cap = Capacity(audio_participants=80, video_composites=2)
    assert admission(40, 0, cap).load() == pytest.approx(0.5)
    assert admission(40, 1, cap).load() == pytest.approx(1.0)
    assert admission(0, 0, Capacity()).load() == 0.0


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
    assert (cluster.audio_participants, cluster.video_composites, cluster.ceiling) == (640.0, 1.0, 0.8)
    own = load_config({"capacity_audio_participants": 40, "admission_ceiling": 0.5}).capacity
    assert (own.audio_participants, own.video_composites, own.ceiling) == (40, 0.0, 0.5)
    with pytest.raises(ConfigError, match="admission_ceiling"):
        load_config({"admission_ceiling": 1.5})
    with pytest.raises(ValueError, match="admission_ceiling"):
        Admission(Capacity(1, 1, 0), lambda: 0, lambda: 0)
