"""Course assignments: exercises marked in the chapters, a student build, per-chapter grading.

    python -m minidiff.tools.course list                         # every exercise, one line each
    python -m minidiff.tools.course build --chapters 3 --out student   # (or --chapters all)
    python -m minidiff.tools.course grade student --chapter 3 [--hidden tests/instructor]
    python -m minidiff.tools.course check                        # every chapter, both ways

**The convention every chapter follows.** The lines a student writes sit in a chapter module
between ``# BEGIN EXERCISE <chapter>.<n>: <task, with its equation and notebook section>`` and
``# END EXERCISE`` (comments: the package runs unchanged). Only the chapter's idea becomes an
exercise, never plumbing, and never a function another chapter's code calls, so a student of
chapter 3 works with real chapters 1, 2, 4, ... . Each test that grades an exercise carries
``@pytest.mark.exercise("3.2")``; each test module carries its chapter's marker
(``pytestmark = pytest.mark.ch3``), and a test graded by an exercise gets that exercise's
chapter marker too (``tests/conftest.py``), so ``pytest -m ch3`` runs everything chapter 3's
exercises are graded by.

``build`` copies the repository, replaces the chosen chapters' exercise spans by ``raise
NotImplementedError("Exercise 3.2: ...")`` and clears their notebooks' outputs; the markers stay,
so a student sees where to write. ``tests/instructor/`` (hidden tests) is left out; ``grade``
copies it back in for the run. ``grade`` prints one line per exercise ("Exercise 3.2: 4/4 tests
pass"). ``check`` builds every chapter's copy and asks that each exercise's tests fail there and
pass in the full repository (``make course-check``); ``tests/test_course.py`` does the same for
two chapters in the default suite, and checks that no solution line leaks into the copy.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN = re.compile(r"^(\s*)# BEGIN EXERCISE (\d+)\.(\d+): (.*)$")
CONTINUED = re.compile(r"^\s*#   (.*)$")
END = re.compile(r"^\s*# END EXERCISE\s*$")
HIDDEN = Path("tests") / "instructor"
COPIED = ("minidiff", "tests", "notebooks", "Makefile", "README.md", "pyproject.toml",
          ".gitignore")
# The instructor's side, left out of a student copy: the hidden tests, and the mutation list and
# the course's own tests, which quote solution lines.
OMITTED = (HIDDEN, Path("tests") / "test_course.py", Path("tests") / "test_mutations.py",
           Path("minidiff") / "tools" / "mutations.py")


class Exercise(typing.NamedTuple):
    id: str  # "3.2"
    chapter: int
    task: str
    file: str  # relative to the repository
    begin: int  # line index of the BEGIN marker
    body: tuple  # the solution lines (between the marker lines, markers excluded)


def exercises(root=ROOT):
    """Every exercise in the package, in file and line order."""
    found = []
    for path in sorted((root / "minidiff").rglob("*.py")):
        lines = path.read_text().split("\n")
        k = 0
        while k < len(lines):
            m = BEGIN.match(lines[k])
            if not m:
                k += 1
                continue
            begin, task = k, m.group(4)
            k += 1
            while k < len(lines) and CONTINUED.match(lines[k]):
                task += " " + CONTINUED.match(lines[k]).group(1).strip()
                k += 1
            start = k
            while k < len(lines) and not END.match(lines[k]):
                if BEGIN.match(lines[k]):
                    raise ValueError(f"{path}: exercise {m.group(2)}.{m.group(3)} has no END")
                k += 1
            if k == len(lines):
                raise ValueError(f"{path}: exercise {m.group(2)}.{m.group(3)} has no END")
            found.append(Exercise(f"{m.group(2)}.{m.group(3)}", int(m.group(2)), task,
                                  str(path.relative_to(root)), begin, tuple(lines[start:k])))
    ids = [e.id for e in found]
    if len(ids) != len(set(ids)):
        raise ValueError(f"exercise numbers must be unique (got {sorted(ids)})")
    return found


def blank(text, keep=lambda exercise_id: True):
    """``text`` of a module with the body of every exercise whose id ``keep`` rejects replaced
    by a ``raise NotImplementedError`` naming the exercise and its task."""
    lines, out, k = text.split("\n"), [], 0
    while k < len(lines):
        m = BEGIN.match(lines[k])
        if not m or keep(f"{m.group(2)}.{m.group(3)}"):
            out.append(lines[k])
            k += 1
            continue
        indent, task = m.group(1), m.group(4)
        out.append(lines[k])
        k += 1
        while CONTINUED.match(lines[k]):
            task += " " + CONTINUED.match(lines[k]).group(1).strip()
            out.append(lines[k])
            k += 1
        message = f"Exercise {m.group(2)}.{m.group(3)}: {task}"
        out.append(f"{indent}raise NotImplementedError(  # your code here")
        out += [f"{indent}    {chunk!r}" for chunk in
                textwrap.wrap(message, 90 - len(indent), drop_whitespace=False)]
        out[-1] += ")"
        while not END.match(lines[k]):
            k += 1
        out.append(lines[k])
        k += 1
    return "\n".join(out)


def _chapters(spec):
    if spec == ["all"]:
        return sorted({e.chapter for e in exercises()})
    return sorted({int(c) for c in spec})


def build(out, chapters, root=ROOT, link_data=False):
    """A student copy of the repository in ``out`` with the exercises of ``chapters`` blanked
    and those chapters' notebook outputs cleared. ``data/`` is copied (or symlinked, for the
    tests' quick builds). Returns the blanked exercises."""
    import nbformat

    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists: remove it or choose another folder")
    chapters = set(chapters)
    for part in COPIED:
        src = root / part
        if src.is_dir():
            shutil.copytree(src, out / part, ignore=shutil.ignore_patterns(
                "__pycache__", ".ipynb_checkpoints"))
        elif src.exists():
            shutil.copy2(src, out / part)
    for part in OMITTED:
        target = out / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if link_data:
        (out / "data").symlink_to(root / "data")
    else:
        shutil.copytree(root / "data", out / "data")
    blanked = [e for e in exercises(root) if e.chapter in chapters]
    for file in sorted({e.file for e in blanked}):
        path = out / file
        path.write_text(blank(path.read_text(), keep=lambda i: int(i.split(".")[0])
                              not in chapters))
    for nb_path in sorted((out / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if int(nb_path.name[:2]) in chapters:
            nb = nbformat.read(nb_path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            nbformat.write(nb, nb_path)
    return blanked


def grade(copy, chapter, hidden=None, out=print):
    """Run chapter ``chapter``'s tests in ``copy`` (with the hidden tests of ``hidden`` added for
    the run) and report per exercise. Returns ``{exercise: (passed, total)}``, with the tests
    tied to no exercise under ``"chapter"``."""
    copy = Path(copy).resolve()
    target = copy / HIDDEN
    added = hidden is not None and not target.exists()
    if added:
        shutil.copytree(hidden, target)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            env = dict(os.environ, PYTHONPATH=str(copy), MINIDIFF_FAST="1",
                       MINIDIFF_GRADE_REPORT=str(report))
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", f"ch{chapter}", "-p",
                            "no:cacheprovider", "--ignore=tests/test_notebooks.py", "tests"],
                           cwd=copy, env=env, capture_output=True, text=True)
            results = json.loads(report.read_text()) if report.exists() else {}
    finally:
        if added:
            shutil.rmtree(target)
    scores = {}
    for outcome in results.values():
        mine = [e for e in outcome["exercises"] if int(e.split(".")[0]) == chapter] or ["chapter"]
        for e in mine:
            passed, total = scores.get(e, (0, 0))
            scores[e] = (passed + (outcome["outcome"] == "passed"), total + 1)
    for e in sorted(scores, key=lambda s: (s == "chapter", s)):
        passed, total = scores[e]
        name = f"Exercise {e}" if e != "chapter" else f"Chapter {chapter}, tests of no exercise"
        out(f"{name}: {passed}/{total} tests pass")
    return scores


def check(chapters, root=ROOT, out=print, others=False):
    """For each chapter: in its student copy every exercise has tests and all of them fail; in
    the full repository they pass. With ``others``, also every unit test of the copy that no
    exercise of the chapter grades must pass there (the other chapters, the spine and the command
    line stay real; minutes per chapter). Returns what does not hold."""
    wrong = []
    for ch in chapters:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "student"
            blanked = build(copy, [ch], root, link_data=True)
            student = grade(copy, ch, root / HIDDEN, out=lambda s: None)
            if others:
                env = dict(os.environ, PYTHONPATH=str(copy), MINIDIFF_FAST="1")
                rest = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-m", f"not ch{ch} and not slow",
                     "-p", "no:cacheprovider", "--ignore=tests/test_notebooks.py", "tests"],
                    cwd=copy, env=env, capture_output=True, text=True)
                summary = rest.stdout.strip().split("\n")[-1]
                out(f"{'ok  ' if rest.returncode == 0 else 'FAIL'} chapter {ch}'s copy, every "
                    f"other unit test: {summary}")
                if rest.returncode != 0:
                    wrong.append(f"chapter {ch} (other tests)")
        full = grade(root, ch, out=lambda s: None)
        for e in blanked:
            s, f = student.get(e.id, (0, 0)), full.get(e.id, (0, 0))
            ok = s[1] > 0 and s[0] == 0 and f[0] == f[1] > 0
            out(f"{'ok  ' if ok else 'FAIL'} exercise {e.id}: student copy {s[0]}/{s[1]} pass, "
                f"full repository {f[0]}/{f[1]}")
            if not ok:
                wrong.append(e.id)
    return wrong


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff.tools.course",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every exercise, one line each")
    b = sub.add_parser("build", help="a student copy with the chosen chapters' exercises blank")
    b.add_argument("--chapters", nargs="+", required=True, help="chapter numbers, or all")
    b.add_argument("--out", default="student", help="the folder to write (must not exist)")
    g = sub.add_parser("grade", help="one chapter's tests in a student copy, per exercise")
    g.add_argument("copy", help="the student copy")
    g.add_argument("--chapter", type=int, required=True)
    g.add_argument("--hidden", default=None, help="a folder of hidden tests to add for the run")
    c = sub.add_parser("check", help="every chapter: exercises fail blank, pass solved")
    c.add_argument("--chapters", nargs="+", default=["all"])
    c.add_argument("--others", action="store_true",
                   help="also run every other unit test in each copy (minutes per chapter)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for e in sorted(exercises(), key=lambda e: tuple(map(int, e.id.split(".")))):
            print(textwrap.shorten(f"{e.id:5s} {e.file}: {e.task}", 160))
    elif args.command == "build":
        blanked = build(args.out, _chapters(args.chapters))
        print(f"{args.out}: {len(blanked)} exercises blanked "
              f"({', '.join(e.id for e in blanked)}); grade with `make grade CH=N`")
    elif args.command == "grade":
        scores = grade(args.copy, args.chapter, args.hidden)
        return 0 if scores and all(p == t for p, t in scores.values()) else 1
    else:
        wrong = check(_chapters(args.chapters), others=args.others)
        print("every exercise fails blank and passes solved" if not wrong
              else f"not so for: {', '.join(wrong)}")
        return 1 if wrong else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
