"""The application object and its loader: what a user's package declares is what every role
gets, and a wrong ``--app`` fails at start with a message naming the fix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.app import MeshApp, load_app
from agents.apps import builtin
from agents.engines.offline import with_steps
from agents.runtime.errors import ConfigError

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "apps"


@pytest.fixture
def on_path() -> Iterator[None]:
    """The fixture package importable, as an installed one would be."""
    sys.path.insert(0, str(FIXTURES))
    yield
    sys.path.remove(str(FIXTURES))
    sys.modules.pop("acme_ops.mesh", None)
    sys.modules.pop("acme_ops", None)


def test_a_users_app_is_loaded_by_its_name(on_path: None) -> None:
    app = load_app("acme_ops.mesh:app")
    assert app.name == "acme-ops"
    assert sorted(t.name for t in app.registry()) == ["count_words", "report_count"]
    assert [p.name for p in with_steps(app.playbooks())] == ["word_count", "steps"]


def test_the_default_app_is_the_builtin_one() -> None:
    app = load_app("agents.apps.builtin:app")
    assert app is builtin.app
    assert {"create_organisation", "echo", "pause"} <= {t.name for t in app.registry()}
    assert [p.name for p in app.playbooks()] == ["onboarding"]


def test_an_app_may_include_another(on_path: None) -> None:
    users = load_app("acme_ops.mesh:app")
    both = MeshApp("both", include=[builtin.app, users])
    assert {"count_words", "echo"} <= {t.name for t in both.registry()}
    with pytest.raises(ValueError, match="app 'both' has two tools named"):
        both.include(builtin.app)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("not a spec", "should look like package.module:app"),
        ("acme_nowhere.mesh:app", "cannot import 'acme_nowhere.mesh'"),
        ("agents.apps.builtin:nothing", "has no 'nothing'"),
        ("agents.apps.builtin:MeshApp", "is a type, not a MeshApp"),
    ],
)
def test_a_wrong_app_fails_naming_the_fix(spec: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_app(spec)
