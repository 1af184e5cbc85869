"""The documentation runs: the docstring example of ``saga_fsm.testing``, and the
README's "Testing your own saga" module against a small shop of the same shape."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import saga_fsm.testing

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"

MYSHOP = """
from collections import Counter

from saga_fsm import SagaBuilder


class Payments:
    def __init__(self):
        self.reset()

    def reset(self):
        self.done = {}
        self.refunded = Counter()

    def refunds(self, saga_id):
        return self.refunded[saga_id]


payments = Payments()


def reserve(ctx):
    return {"reservation": ctx.idempotency_key}


def release(ctx):
    return None


def charge(ctx):
    return payments.done.setdefault(ctx.idempotency_key, {"payment": ctx.idempotency_key})


def refund(ctx):
    payments.refunded[ctx.saga_id] = 1  # idempotent: however often it runs


def ship(ctx):
    return None


order = (
    SagaBuilder("order")
    .step("reserve", reserve, compensation=release)
    .step("charge", charge, compensation=refund)
    .pivot("ship", ship)
    .build()
)
"""


def test_the_package_docstring_example_runs() -> None:
    failures, attempted = doctest.testmod(saga_fsm.testing, optionflags=doctest.ELLIPSIS)
    assert attempted > 10 and failures == 0


def test_the_readme_section_is_a_working_test_module(pytester: pytest.Pytester) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Testing your own saga", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    lines = [line for line in code.group(1).splitlines() if line.strip()]
    assert len(lines) <= 13  # "about ten lines"
    pytester.mkpydir("myshop")
    pytester.path.joinpath("myshop", "sagas.py").write_text(MYSHOP)
    pytester.makepyfile(test_order_saga=code.group(1))
    pytester.makeconftest(
        "from hypothesis import settings\n"
        "settings.register_profile('quick', max_examples=25)\n"
        "settings.load_profile('quick')\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*saga_fsm transition coverage*", "*(100%)"])
