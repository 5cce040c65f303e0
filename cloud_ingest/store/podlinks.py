"""Linking PODs into their device's hash chain as they are stored (pure; both backends).

Workers check a POD's link before writing it (:func:`cloud_ingest.verify.check_chain`),
but with N workers on a shared subscription a POD and its predecessor can be written
by two transactions at once, each not seeing the other's. So the store decides again,
inside the write transaction and under a per-device lock, from what is stored:
:func:`plan_pods` takes the incoming PODs and the stored PODs around them and says what
to insert (with which chain status), which stored PODs to relink, and which PODs to
refuse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from cloud_ingest.store.base import Pod
from cloud_ingest.verify import Rejected, check_chain, check_replay


@dataclass(slots=True)
class PodPlan:
    """What to do with a device's incoming PODs.

    ``insert``: new PODs with their chain status, in pod_seq order. ``duplicates``:
    PODs whose envelope seq is stored already. ``refused``: PODs that must not be stored
    (``replayed_pod``: another POD holds their pod_seq; ``broken_chain``: their ``prev``
    is not the digest of the stored predecessor), with the verdict to quarantine them
    with. ``relinked``: stored PODs that were pending and whose predecessor is now
    stored, with their new status ("ok", or "broken" when it does not match).
    """

    insert: list[Pod] = field(default_factory=list)
    duplicates: int = 0
    refused: list[tuple[Pod, Rejected]] = field(default_factory=list)
    relinked: list[Pod] = field(default_factory=list)


def neighbour_pod_seqs(pods: Iterable[Pod]) -> list[int]:
    """The pod_seqs :func:`plan_pods` needs the stored PODs of: each, and its neighbours."""
    wanted: set[int] = set()
    for pod in pods:
        wanted.update((pod.pod_seq - 1, pod.pod_seq, pod.pod_seq + 1))
    wanted.discard(0)
    return sorted(wanted)


def plan_pods(incoming: Sequence[Pod], stored: Iterable[Pod]) -> PodPlan:
    """Plan storing ``incoming`` (one device's PODs) next to ``stored``.

    ``stored`` must include every stored POD of the device whose envelope seq is one of
    the incoming seqs or whose pod_seq is in :func:`neighbour_pod_seqs` of ``incoming``.
    The chain status an incoming POD carries is ignored: the store decides it here.
    PODs are taken in pod_seq order, so a predecessor and its successor arriving in one
    batch link to each other whatever their order in the batch.
    """
    by_seq = {p.seq: p for p in stored}
    by_pod_seq = {p.pod_seq: p for p in by_seq.values()}
    plan = PodPlan()
    inserted: dict[int, Pod] = {}
    relinked: dict[int, Pod] = {}
    for candidate in sorted(incoming, key=lambda p: (p.pod_seq, p.seq)):
        held = by_seq.get(candidate.seq)
        if held is not None:
            if held.jws == candidate.jws:
                plan.duplicates += 1
            else:  # another POD under a stored envelope seq: evidence, not a duplicate
                plan.refused.append(
                    (
                        candidate,
                        Rejected(
                            "replayed_pod",
                            f"envelope seq {candidate.seq} already holds POD {held.pod_seq}",
                            candidate.device_id,
                        ),
                    )
                )
            continue
        replayed = check_replay(candidate, by_pod_seq.get(candidate.pod_seq))
        if replayed is not None:
            plan.refused.append((candidate, replayed))
            continue
        status = check_chain(candidate, by_pod_seq.get(candidate.pod_seq - 1))
        if isinstance(status, Rejected):
            plan.refused.append((candidate, status))
            continue
        pod = replace(candidate, chain_status=status)
        by_seq[pod.seq] = by_pod_seq[pod.pod_seq] = inserted[pod.pod_seq] = pod
        successor = by_pod_seq.get(pod.pod_seq + 1)
        if successor is not None and successor.chain_status == "pending":
            link = check_chain(successor, pod)
            successor = replace(
                successor, chain_status="broken" if isinstance(link, Rejected) else link
            )
            by_seq[successor.seq] = by_pod_seq[successor.pod_seq] = successor
            relinked[successor.pod_seq] = successor
    plan.insert = list(inserted.values())
    plan.relinked = list(relinked.values())
    return plan
