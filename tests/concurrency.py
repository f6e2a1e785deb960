"""Real races on the real database: callers in threads, each with its own database connection (so
each has its own transactions, as separate workers do), released together by a barrier."""
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connection


def at_once(count: int, call) -> list:
    """`call(i)` for i in range(count), each in its own thread and connection, all started at the
    same moment; their results in order. Tests that use it need
    `@pytest.mark.django_db(transaction=True)`: the threads see only committed rows."""
    start = threading.Barrier(count)

    def one(index):
        try:
            start.wait()
            return call(index)
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))
