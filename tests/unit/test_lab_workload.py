"""`outpost lab run`'s workload and fault placement come from the seed alone: the same
seed gives the same steps and the same fault log; another seed gives others."""

from __future__ import annotations

import random
from typing import Any

import pytest

from simulators.lab.scenarios import SCENARIOS
from simulators.lab.workload import Mix, plan

MFDS = {"site-1": ["s1-mfd-1", "s1-mfd-2"], "site-2": ["s2-mfd-1", "s2-mfd-2"],
        "provider-1": ["p1-mfd-1"]}
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


class RecordingDriver:
    """The scenario scripts' view of a lab, recording instead of acting."""

    def __init__(self, seed: int, rng: random.Random) -> None:
        self.seed = seed
        self.rng = rng
        self.next_step = 0
        self.held: dict[tuple[str, str], int] = {}
        self.log: list[Any] = []
        self.hooks: dict[int, list[Any]] = {}

    def phase(self, name: str, count: int, mix: Mix) -> None:
        steps = plan(self.seed, name, self.next_step, count, mix, MFDS, USERS, self.held)
        for step in steps:
            for action in self.hooks.pop(step.index, []):
                action()
            self.log.append(step)
        self.next_step += count

    def at_step(self, index: int, action: Any) -> None:
        self.hooks.setdefault(index, []).append(action)

    def cut_during(self, name: str, action: str, from_index: int) -> Any:
        def happened() -> bool:
            hit = next((s.index for s in self.log if not isinstance(s, tuple)
                        and s.index >= from_index and s.action == action and s.site == name),
                       None)
            if hit is not None:
                self.log.append(("cut-during", name, hit))
            return hit is not None
        return happened

    def cut(self, name: str, mode: str = "partition") -> None:
        self.log.append(("cut", name, mode, self.next_step))

    def heal(self, name: str) -> None:
        self.log.append(("heal", name, self.next_step))

    def kill(self, daemon: str, delay: float = 0.0) -> None:
        self.log.append(("kill", daemon, delay))

    def wait_grants(self, after: float) -> None:
        self.log.append(("wait-grants", self.next_step))

    def promote(self, provider: str) -> None:
        self.log.append(("promote", provider, self.next_step))

    def wait_mode(self, site: str, mode: str, timeout: float = 60.0) -> None:
        self.log.append(("wait", site, mode))


def script_log(name: str, seed: int) -> tuple[list[Any], dict[str, str]]:
    scenario = SCENARIOS[name]
    rng = random.Random(f"outpost-lab-run:{name}:{seed}")
    failpoints = scenario.failpoints(rng)
    driver = RecordingDriver(seed, rng)
    scenario.script(driver)  # type: ignore[arg-type]
    return driver.log, failpoints


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_seed_same_workload_and_faults(name):
    first, armed = script_log(name, 3)
    again, armed_again = script_log(name, 3)
    assert first == again and armed == armed_again
    other, _ = script_log(name, 4)
    assert other != first
    actions = [s for s in first if not isinstance(s, tuple)]
    assert len(actions) >= 250, "enough steps for 200 acknowledged charges"
    assert {s.action for s in actions} == {"copy", "print", "release"}


def test_releases_are_planned_only_for_someone_with_held_jobs():
    held: dict[tuple[str, str], int] = {}
    steps = plan(9, "p", 0, 400, Mix({"site-1": 1, "site-2": 1}), MFDS, USERS, held)
    waiting: dict[tuple[str, str], int] = {}
    for step in steps:
        key = (step.site, step.user)
        if step.action == "print":
            waiting[key] = waiting.get(key, 0) + 1
        elif step.action == "release":
            assert waiting.get(key), f"step {step.index} releases nothing"
            waiting[key] = 0
    assert waiting == {k: v for k, v in held.items()}
    assert [s.index for s in steps] == list(range(400))


def test_a_spender_copies_big_at_every_site():
    steps = plan(2, "p", 10, 200, Mix({"site-1": 1, "site-2": 1}, spender=("judy", 0.5, 100)),
                 MFDS, USERS, {})
    spends = [s for s in steps if s.user == "judy" and s.pages == 100]
    assert len(spends) > 60 and {s.site for s in spends} == {"site-1", "site-2"}
