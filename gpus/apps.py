from django.apps import AppConfig


class GpusConfig(AppConfig):
    name = "gpus"
    verbose_name = "GPUs"

    def ready(self):
        from django_q.signals import post_spawn

        # Every worker process registers its (host, device) slot and keeps marking it seen.
        post_spawn.connect(_worker_started, dispatch_uid="gpus.worker_started")


def _worker_started(sender, proc_name=None, **kwargs):
    import logging

    from django.db import connection

    from gpus.services import SeenThread, worker_register

    try:
        worker_register()
        SeenThread().start()
    except Exception:  # noqa: BLE001 - registration must not keep the worker from starting
        logging.getLogger("mistudio").exception("Registering worker %s failed", proc_name)
    finally:
        connection.close()
