"""Issue 14: a config fuzz test. Mutated variants of ``edge-agent sample-config`` (values of every type and
extreme, removed, duplicated and unknown keys, truncation) are each either accepted, and then run and stop
cleanly, or refused with exit 78 naming the key; never a traceback, never a dead thread.

Every variant goes through ``check-config``'s code path in-process (load + validate + the state-dir check,
exactly what ``run`` does before it starts); a deterministic sample also runs as a real ``edge-agent run``
against the test broker for a few seconds and is stopped with SIGTERM. The seed is fixed and printed
(``EDGE_FUZZ_SEED`` replays another one).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent import config
from edge_agent.config import EX_CONFIG
from edge_agent.errors import ConfigError
from edge_agent.sample import render
from tests.helpers import ROOT

SEED = int(os.environ.get("EDGE_FUZZ_SEED", "1414"))
VARIANTS = 600
RUN_SAMPLE = 20
RUN_SECONDS = 3.0
RUN_AT_ONCE = 5

VALUES = ["inf", "-inf", "nan", "+nan", "1e-300", "1e300", "1180591620717411303424", "-1180591620717411303424",
          "9223372036854775808", "-1", "0", "-0.0", "1", "0.5", "3.5", '""', '"\\u0000"', '"a\\nb"', '"ünï😀"',
          '"a/b+#"', '"../../etc"', "true", "false", "[]", "{}", '[1, "a"]', "[[]]", '{a = 1}', '"1"',
          "1979-05-27T07:32:00Z", "07:32:00", '"' + "x" * 5000 + '"', "0x7fffffff", "-9223372036854775809"]
KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*?)(\s*#.*)?$")


def base_text(port: int, state: Path) -> str:
    """``sample-config`` made runnable here: our broker, a state dir under the test's tmp dir, a device id."""
    text = render()
    text = text.replace('# id = ""', 'id = "fuzz-dev"', 1).replace("port = 1883", f"port = {port}", 1)
    text = text.replace('# dir = ""', f'dir = "{state}"', 1).replace("journal = true", "journal = false", 1)
    return text


@dataclass
class Variant:
    n: int
    what: str
    keys: list[str]  # the keys the mutation touched (none for a truncation)
    text: str


def _key_lines(lines: list[str]) -> list[int]:
    return [i for i, ln in enumerate(lines) if KEY_LINE.match(ln) and not ln.lstrip().startswith("#")]


def mutate(base: str, rng: random.Random, n: int) -> Variant:
    lines = base.splitlines()
    idx = _key_lines(lines)
    kinds = ["value"] * 6 + ["remove", "duplicate", "unknown", "truncate", "value2", "section"]
    kind = rng.choice(kinds)
    i = rng.choice(idx)
    m = KEY_LINE.match(lines[i])
    assert m is not None
    key = m.group(2)
    if kind in ("value", "value2"):
        keys = []
        for j in [i] if kind == "value" else rng.sample(idx, 2):
            mj = KEY_LINE.match(lines[j])
            assert mj is not None
            lines[j] = f"{mj.group(1)}{mj.group(2)}{mj.group(3)}{rng.choice(VALUES)}"
            keys.append(mj.group(2))
        return Variant(n, f"{kind}: " + ", ".join(repr(lines[j][:60]) for j in [i]), keys, "\n".join(lines) + "\n")
    elif kind == "remove":
        what = f"remove {key}"
        del lines[i]
    elif kind == "duplicate":
        what = f"duplicate {key}"
        lines.insert(i + 1, lines[i])
    elif kind == "unknown":
        key = rng.choice(["bogus", "prot", "intervall", "max_agee", "ünknown"])
        what = f"unknown key {key}"
        lines.insert(i + 1, f"{key} = 1")
    elif kind == "section":
        key = rng.choice(["mqtt", "storage", "device", "sensors", "agent"])
        what = f"section {key} replaced by a value"
        lines.insert(0, f"{key} = {rng.choice(VALUES)}")
    else:
        cut = rng.randrange(len(base))
        return Variant(n, f"truncate at {cut}", [], base[:cut])
    return Variant(n, what, [key], "\n".join(lines) + "\n")


def check_in_process(v: Variant, env: dict[str, str]) -> list[str] | None:
    """None if ``check-config`` accepts the variant, else its problems; any other exception fails the test."""
    try:
        config.check_runnable(config.loads(v.text, f"variant-{v.n}", env=env))
    except ConfigError as e:
        return e.errors
    return None


def _named(v: Variant, problems: list[str]) -> bool:
    """Every problem names a key path (or the TOML line); a value mutation's key is among them."""
    if not all(re.match(r"^([\w\[\].]+: |invalid TOML)", p) for p in problems):
        return False
    return not v.keys or any(k in p for k in v.keys for p in problems)


def test_config_fuzz(broker, tmp_path: Path) -> None:
    print(f"config fuzz seed {SEED} (EDGE_FUZZ_SEED={SEED} replays it)")
    rng = random.Random(SEED)
    default_state = tmp_path / "default-state"
    env = {"STATE_DIRECTORY": str(default_state)}
    base = base_text(broker.port, tmp_path / "state")
    assert check_in_process(Variant(0, "base", [], base), env) is None
    t0 = time.monotonic()
    variants = [mutate(base, rng, n) for n in range(1, VARIANTS + 1)]
    outcomes: dict[int, list[str] | None] = {}
    unnamed = []
    for v in variants:
        outcomes[v.n] = problems = check_in_process(v, env)
        if problems is not None and not _named(v, problems):
            unnamed.append((v.what, problems))
    refused = sum(1 for p in outcomes.values() if p is not None)
    print(f"{VARIANTS} variants checked in {time.monotonic() - t0:.1f} s: {refused} refused, "
          f"{VARIANTS - refused} accepted")
    assert not unnamed, unnamed[:5]
    assert 100 < refused < VARIANTS - 50  # the mix exercises both sides

    ok = [v for v in variants if outcomes[v.n] is None]
    bad = [v for v in variants if outcomes[v.n] is not None]
    sample = rng.sample(ok, RUN_SAMPLE // 2) + rng.sample(bad, RUN_SAMPLE - RUN_SAMPLE // 2)
    t1 = time.monotonic()
    failures = []
    for i in range(0, len(sample), RUN_AT_ONCE):
        failures += _run_batch(sample[i:i + RUN_AT_ONCE], outcomes, tmp_path, env)
    print(f"{len(sample)} variants run as `edge-agent run` in {time.monotonic() - t1:.1f} s")
    assert not failures, "\n\n".join(failures)


def _run_batch(batch: list[Variant], outcomes: dict[int, list[str] | None], tmp_path: Path,
               env: dict[str, str]) -> list[str]:
    procs = []
    for v in batch:
        d = tmp_path / f"run-{v.n}"
        d.mkdir()
        text = v.text.replace(str(tmp_path / "state"), str(d / "state"))  # each its own state dir
        (d / "config.toml").write_text(text)
        err = open(d / "stderr", "wb")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(d / "config.toml")],
                             stdout=subprocess.DEVNULL, stderr=err, cwd=d,
                             env={**os.environ, **env, "STATE_DIRECTORY": str(d / "default-state"),
                                  "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        err.close()
        procs.append((v, d, p))
    # on a loaded machine an interpreter may still be importing after RUN_SECONDS: a refused variant must
    # exit by itself (78), an accepted one is stopped only once it logged its start (SIGTERM before the
    # handler exists would just kill it: that measures the machine, not the agent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            p.poll() is not None or "starting" in (d / "stderr").read_text(errors="replace") for _v, d, p in procs):
        time.sleep(0.1)
    time.sleep(RUN_SECONDS)
    failures = []
    for v, d, p in procs:
        refused = outcomes[v.n] is not None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait(10)
        stderr = (d / "stderr").read_text(errors="replace")
        expected = EX_CONFIG if refused else 0
        problems = []
        if rc != expected:
            problems.append(f"exit {rc}, expected {expected}")
        if "Traceback" in stderr or "Exception in thread" in stderr:
            problems.append("a traceback")
        if refused and v.keys and not any(k in stderr for k in v.keys):
            problems.append(f"the refusal does not name {' or '.join(v.keys)}")
        if problems:
            failures.append(f"variant {v.n} ({v.what}): {', '.join(problems)}\n{stderr[-3000:]}")
    return failures
