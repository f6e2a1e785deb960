from django.apps import AppConfig


class MistudioConfig(AppConfig):
    """The project itself, as an app: its start-up checks (mistudio.checks)."""

    name = "mistudio"
    verbose_name = "miStudio"

    def ready(self):
        from mistudio import checks  # noqa: F401 (registers the checks)
