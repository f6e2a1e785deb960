"""Start-up checks of the project's own settings (`manage.py check`, and every server start)."""
import stat
from pathlib import Path

from django.conf import settings
from django.core.checks import Warning, register
from django.db import connections


def private_paths() -> list[Path]:
    """What must be readable by miStudio's own account only: the data folder, the key kept in it,
    and the embedded database (which may live elsewhere)."""
    paths = [Path(settings.DATA_DIR), Path(settings.DATA_DIR) / "secret_key"]
    database = connections.databases["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        paths.append(Path(database["NAME"]))
    return paths


@register()
def check_private_modes(app_configs=None, **kwargs):
    """miStudio creates these 0700 and 0600 (settings.py sets the mask), but a folder made by an
    earlier version, by hand, or by a copy keeps its mode: say so rather than chmod it behind the
    operator's back (it may be shared on purpose, a group that backs it up, say)."""
    warnings = []
    for path in private_paths():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            warnings.append(Warning(
                f"{path} has mode {mode:04o}: other accounts on this machine can "
                f"{'list and enter' if path.is_dir() else 'read'} it.",
                hint=f"chmod -R go-rwx {path}  (miStudio creates it {'0700' if path.is_dir() else '0600'})",
                id="mistudio.W001",
            ))
    return warnings
