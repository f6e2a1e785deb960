"""Fixtures every test may use: the tiny real models (tests.model_fixtures). Nothing Django here:
tests/engine runs with no Django at all; the Django test folders' own conftests add theirs
(tests.django_fixtures)."""
pytest_plugins = ["tests.model_fixtures"]
