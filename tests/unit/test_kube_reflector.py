"""The reflector's list + watch loop against a scripted API: bookmarks move the resume point, a
watch the server ends resumes without a list, 410 Gone costs exactly one relist, failures back off."""

from __future__ import annotations

import threading

from cni_calico.kube import KubeError
from cni_calico.kubecontrollers.client import Gone, WatchEvent
from cni_calico.kubecontrollers.reflector import Reflector


def obj(name: str, rv: str) -> dict:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class ScriptedApi:
    """list() answers from `lists`; watch() plays the next script entry (events, then an exception or end)."""

    def __init__(self, lists, watches, stop: threading.Event) -> None:
        self.lists, self.watches, self.stop = list(lists), list(watches), stop
        self.watched_from: list[str] = []

    def list(self, path):
        return self.lists.pop(0)

    def watch(self, path, rv, timeout_seconds=0):
        self.watched_from.append(rv)
        if not self.watches:
            self.stop.set()
            return
        events, end = self.watches.pop(0)
        yield from events
        if end is not None:
            raise end


class Recorder:
    def __init__(self) -> None:
        self.calls: list = []

    def resync(self, items):
        self.calls.append(("resync", [i["metadata"]["name"] for i in items]))

    def event(self, event: WatchEvent):
        self.calls.append((event.type, event.object["metadata"]["name"]))


def test_bookmarks_resume_gone_relists_and_errors_back_off():
    stop = threading.Event()
    api = ScriptedApi(
        lists=[([obj("a", "5")], "10"), ([obj("a", "5"), obj("c", "40")], "50")],
        watches=[
            ([WatchEvent("ADDED", obj("b", "11")), WatchEvent("BOOKMARK", obj("", "20"))], None),  # server ends it
            ([WatchEvent("DELETED", obj("b", "21"))], KubeError("connection reset")),
            ([], Gone(410, "Expired", "too old resource version")),
            ([WatchEvent("MODIFIED", obj("c", "51"))], None),
        ],
        stop=stop,
    )
    rec = Recorder()
    reflector = Reflector(api, "/api/v1/things", rec, stop)
    reflector.run()
    assert rec.calls == [("resync", ["a"]), ("ADDED", "b"), ("DELETED", "b"), ("resync", ["a", "c"]),
                         ("MODIFIED", "c")]
    # 10 from the list, 20 from the bookmark, 21 after the broken watch (then 410), 50 from the relist.
    assert api.watched_from == ["10", "20", "21", "50", "51"]
    assert reflector.lists == 2
