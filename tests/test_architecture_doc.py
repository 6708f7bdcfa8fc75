"""docs/architecture.md stays true: it names every module of the package."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_architecture_page_names_every_module() -> None:
    """A new module gets its row in docs/architecture.md (and a removed one loses it)."""
    page = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "dispatcher"
    modules = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    )
    missing = [name for name in modules if Path(name).name not in page]
    assert not missing, f"docs/architecture.md does not name {missing}"
