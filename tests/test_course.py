"""The course build (minidiff/tools/course.py): every chapter has its exercises, each graded by a
test; the student copy leaks no solution line, in code or in a notebook; and, for two chapters
(run quickly: their own tests only), the exercises fail in the student copy and pass in the full
repository. `make course-check` does the last for every chapter."""

import re
from pathlib import Path

import nbformat
import pytest

from minidiff.tools import course

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = course.exercises()


def _graded_ids():
    """Every exercise id named in an ``exercise(...)`` marker in the tests (hidden ones too)."""
    ids = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for args in re.findall(r"mark\.exercise\(([^)]*)\)", path.read_text()):
            ids.update(re.findall(r"\"(\d+\.\d+)\"", args))
    return ids


def test_each_built_chapter_has_three_to_six_exercises_and_each_is_graded():
    per_chapter = {}
    for e in EXERCISES:
        per_chapter.setdefault(e.chapter, []).append(e.id)
    assert set(per_chapter) >= {1, 2, 3, 4, 5, 6, 9}
    assert all(3 <= len(ids) <= 6 for ids in per_chapter.values()), per_chapter
    assert not {e.id for e in EXERCISES} - _graded_ids(), "exercises graded by no test"
    readme = (ROOT / "README.md").read_text()
    assert all(f"**{e.id}**" in readme for e in EXERCISES), "the README lists every exercise"


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "student"
    course.build(out, [e.chapter for e in EXERCISES], link_data=True)
    return out


def _meaningful(line):
    s = " ".join(line.split())
    return len(s) >= 20 and not s.startswith("#")


def test_the_student_copy_holds_no_solution_line(student_copy):
    # No line of a solution (20 characters or more, comments aside) stands anywhere in the
    # copy's package, whole or inside another line (a string, say): not where it was, and not
    # duplicated in another function or module.
    package = "\n".join(" ".join(line.split()) for path in (student_copy / "minidiff").rglob(
        "*.py") for line in path.read_text().split("\n"))
    for e in EXERCISES:
        assert f"Exercise {e.id}:" in (student_copy / e.file).read_text()  # its stub
        leaked = [line for line in e.body if _meaningful(line)
                  and " ".join(line.split()) in package]
        assert not leaked, f"exercise {e.id} leaks {leaked}"
    for part in course.OMITTED:
        assert not (student_copy / part).exists(), f"{part} is the instructor's"


def test_no_notebook_of_the_student_copy_shows_a_solution(student_copy):
    solutions = {" ".join(line.split()) for e in EXERCISES for line in e.body if _meaningful(line)}
    for path in (student_copy / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.get("outputs"), f"{path.name} keeps outputs of a blanked chapter"
            text = cell.source + "".join(str(o) for o in cell.get("outputs", []))
            flat = " ".join(text.split())
            assert not [s for s in solutions if s in flat], f"{path.name} shows a solution"


@pytest.mark.parametrize("chapter", [1, 3])
def test_exercises_fail_in_the_student_copy_and_pass_in_the_full_repository(chapter, tmp_path):
    copy = tmp_path / "student"
    blanked = course.build(copy, [chapter], link_data=True)
    student = course.grade(copy, chapter, ROOT / course.HIDDEN, out=lambda s: None)
    full = course.grade(ROOT, chapter, out=lambda s: None)
    for e in blanked:
        assert student[e.id][0] == 0 and student[e.id][1] >= 1, (e.id, student.get(e.id))
        assert full[e.id][0] == full[e.id][1] >= 1, (e.id, full.get(e.id))


def test_blank_replaces_only_the_chosen_exercises():
    text = ("def f(x):\n    # BEGIN EXERCISE 7.1: double it\n    #   (eq. (1))\n    y = 2 * x\n"
            "    # END EXERCISE\n    return y\n")
    out = course.blank(text, keep=lambda i: False)
    assert "y = 2 * x" not in out and "# END EXERCISE" in out
    with pytest.raises(NotImplementedError, match=r"^Exercise 7\.1: double it \(eq\. \(1\)\)$"):
        exec(out + "f(1)\n", {})
    assert course.blank(text, keep=lambda i: True) == text
