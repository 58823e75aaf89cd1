"""The mutation check's list stays true to the code (each mutated line occurs exactly once), so
the check cannot go stale; running it is `make mutations` (minutes), not part of this suite."""

import pytest

from minidiff.tools import mutations


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_to_exactly_one_line(mutation):
    mutated = mutations.check(mutation)
    assert mutated != (mutations.ROOT / mutation.file).read_text()
    assert all((mutations.ROOT / t).exists() for t in mutation.tests)


def test_names_are_unique():
    names = [m.name for m in mutations.MUTATIONS]
    assert len(names) == len(set(names))
