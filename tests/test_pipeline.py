"""The deprecated `minidiff.pipeline`: old names still work, say where they moved, and nothing
else answers."""

import pytest

from minidiff import datasets, guidance, images, pipeline
from minidiff.tools import sweep


@pytest.mark.parametrize("name, home", [("sample", images), ("load_model", images),
                                        ("guided_eps", guidance), ("save_samples", datasets),
                                        ("dit_sweep", sweep)])
def test_old_names_forward_to_their_new_home_with_a_warning(name, home):
    with pytest.warns(DeprecationWarning, match=f"moved to {home.__name__}.{name}"):
        assert getattr(pipeline, name) is getattr(home, name)


def test_other_names_are_not_there():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        pipeline.nothing_here  # noqa: B018
