import pytest

from backend.models import JobStatus
from backend.services.jobs import ALLOWED, check_transition
from backend.services.lifecycle import TransitionError

S = JobStatus


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.queued, S.running),
        (S.queued, S.cancelled),
        (S.running, S.succeeded),
        (S.running, S.diverged),
        (S.running, S.cancelled),
        (S.running, S.failed),
        (S.running, S.queued),
        (S.running, S.lost),
        (S.lost, S.running),
        (S.lost, S.succeeded),
    ],
)
def test_allowed(old, new):
    check_transition(old, new)


@pytest.mark.parametrize("terminal", [S.succeeded, S.failed, S.cancelled, S.diverged])
@pytest.mark.parametrize("new", list(S))
def test_terminal_states_are_final(terminal, new):
    with pytest.raises(TransitionError):
        check_transition(terminal, new)


@pytest.mark.parametrize(
    ("old", "new"), [(S.queued, S.succeeded), (S.queued, S.diverged), (S.running, S.running), (S.queued, S.lost), (S.lost, S.queued)]
)
def test_refused(old, new):
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_every_state_is_covered():
    assert set(ALLOWED) == set(S)
    # `lost` ends a tracked run (it has a finish time, its stream closes) but its tracker may come back.
    assert {s for s in S if s.terminal} == {S.succeeded, S.failed, S.cancelled, S.diverged, S.lost}
